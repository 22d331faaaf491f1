"""Checkout's processes: `python -m services.checkout relay | consumer | admitter | line-status | migrate`."""
from services.checkout import admitter, line_status
from services.checkout.bootstrap import bootstrap
from shared import processes

processes.main(bootstrap, "checkout", extra={
    "admitter": processes.Process("open the drops' lines and admit buyers from them",
                                  lambda root, args: admitter.run(root)),
    "line-status": processes.Process(
        "serve the lines' public status to the crowd polling them (uvicorn)", line_status.run,
        lambda parser: parser.add_argument("--bind", default="127.0.0.1:8005", help="HOST:PORT (default %(default)s)")),
})
