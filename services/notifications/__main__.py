"""Notifications' processes: `python -m services.notifications relay | consumer | migrate`."""
from services.notifications.bootstrap import bootstrap
from shared import processes

processes.main(bootstrap, "notifications")
