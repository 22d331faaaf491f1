"""Checkout's processes: `python -m services.checkout relay | consumer | admitter | migrate`."""
from services.checkout import admitter
from services.checkout.bootstrap import bootstrap
from shared import processes

processes.main(bootstrap, "checkout", extra={
    "admitter": processes.Process("open the drops' lines and admit buyers from them",
                                  lambda root, args: admitter.run(root)),
})
