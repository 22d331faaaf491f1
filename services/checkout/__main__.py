"""Checkout's processes: `python -m services.checkout relay | consumer | migrate`."""
from services.checkout.bootstrap import bootstrap
from shared import processes

processes.main(bootstrap, "checkout")
