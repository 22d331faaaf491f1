"""`make run`'s supervisor stops every child exactly once and exits, however many SIGTERMs and
SIGINTs it gets (make forwards the one it receives, so two or three arrive together)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.client import poll
from devtools.stack import ROOT
from tests.unit.devtools.cheap_stack import CHILDREN, child_log

TERM, INT = signal.SIGTERM, signal.SIGINT


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an exited child nobody has reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def case(first, then, when):
    names = "+".join(signal.Signals(signum).name[3:] for signum in (first, *then))
    return pytest.param(first, then, when, id=f"{names} {when}")


@pytest.mark.parametrize("first, then, when", [
    case(TERM, [TERM, TERM], "at once"),
    case(TERM, [INT], "at once"),
    case(INT, [TERM, INT], "at once"),
    case(TERM, [TERM, TERM], "while stopping"),
    case(INT, [INT, TERM], "while stopping"),
])
def test_repeated_stop_signals_stop_every_child_once_and_the_supervisor_exits(tmp_path, first, then, when):
    output = tmp_path / "supervisor.out"
    with open(output, "wb") as sink:
        supervisor = subprocess.Popen([sys.executable, "-m", "tests.unit.devtools.cheap_stack", str(tmp_path)],
                                      cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    children = []
    try:
        poll(lambda: b"supervising" in output.read_bytes() or supervisor.poll() is not None, timeout=60,
             what="the supervisor to start its children")
        assert supervisor.poll() is None, output.read_text()
        children = [int(child_log(tmp_path, name)[0]) for name in CHILDREN]

        supervisor.send_signal(first)
        if when == "while stopping":
            poll(lambda: any(child_log(tmp_path, name)[1:] for name in CHILDREN), timeout=30,
                 what="the supervisor to start stopping its children")
        for signum in then:
            supervisor.send_signal(signum)

        poll(lambda: supervisor.poll() is not None, timeout=30, what="the supervisor to exit")
        poll(lambda: not any(alive(pid) for pid in children), timeout=30, what="every child to be gone")
        assert supervisor.returncode == 0, output.read_text()
        assert {name: child_log(tmp_path, name)[1:] for name in CHILDREN} == {name: ["SIGTERM"] for name in CHILDREN}
    finally:  # whatever a failed run left behind
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
