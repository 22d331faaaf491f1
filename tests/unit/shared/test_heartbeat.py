import os
import subprocess
import sys
import time

from shared.heartbeat import Heartbeat, age_seconds


def check(path, max_age):
    return subprocess.run([sys.executable, "-m", "shared.heartbeat", str(path), "--max-age", str(max_age)]).returncode


def test_a_loop_that_beats_is_alive_and_one_that_stopped_is_not(tmp_path):
    path = tmp_path / "heartbeat"
    assert check(path, 60) == 1  # never beat
    Heartbeat(str(path)).beat()
    assert age_seconds(str(path)) < 5 and check(path, 60) == 0
    stale = time.time() - 120
    os.utime(path, (stale, stale))
    assert check(path, 60) == 1


def test_without_a_path_beating_writes_nothing(tmp_path):
    Heartbeat("").beat()
    assert list(tmp_path.iterdir()) == []
