"""The local cluster's process supervision (e2e/cluster.py) signals only the process it
started: a PID whose start time differs (reused by the system) or a record without one is
never touched."""

import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import cluster


def test_only_the_recorded_process_is_signalled() -> None:
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = cluster._start_time(proc.pid)
        assert started is not None
        record = (proc.pid, started)
        assert cluster._alive(record)
        for stranger in ((proc.pid, started + 1), (proc.pid, None)):  # reused PID; no time
            assert not cluster._alive(stranger)
            cluster._kill(stranger, signal.SIGKILL)
            assert proc.poll() is None
        cluster._kill(record, signal.SIGTERM)
        assert proc.wait(timeout=5) == -signal.SIGTERM
        assert not cluster._alive(record)
        cluster._kill(record, signal.SIGKILL)  # gone: nothing to signal, no error
    finally:
        proc.kill()
        proc.wait()
