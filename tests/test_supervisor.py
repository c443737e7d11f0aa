"""bin/run's supervisor (core/supervisor.py) with real processes: a crashed process is restarted
and logged while the others keep running; SIGTERM stops every process it started, promptly,
even one that ignores SIGTERM (as a Celery worker in warm shutdown does)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEADY = f"{sys.executable} -c 'import time; time.sleep(600)'"
STUBBORN = f"{sys.executable} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'"


def _pids(log: str, name: str) -> list[int]:
    return [int(p) for p in re.findall(rf"started {name} \(pid (\d+)\)", log)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _wait_for(stderr: Path, predicate: object, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stderr.read_text()
        if predicate(text):  # type: ignore[operator]
            return text
        time.sleep(0.1)
    raise AssertionError(stderr.read_text())


def test_restarts_a_crashed_process_and_stops_everything_promptly(tmp_path: Path) -> None:
    stderr = tmp_path / "supervisor.err"
    with stderr.open("wb") as err:
        supervisor = subprocess.Popen(
            [
                sys.executable, "-m", "core.supervisor", "--log-dir", str(tmp_path), "--grace", "2",
                f"web={STEADY}", f"worker={STUBBORN}",
            ],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            text = _wait_for(stderr, lambda t: _pids(t, "web") and _pids(t, "worker"))
            (web,), (worker,) = _pids(text, "web"), _pids(text, "worker")
            os.kill(worker, signal.SIGKILL)  # the worker dies
            text = _wait_for(stderr, lambda t: len(_pids(t, "worker")) == 2)
            assert "worker exited with -9; restarting in 1 s" in text
            assert _pids(text, "web") == [web] and _alive(web)  # the web server kept running
            new_worker = _pids(text, "worker")[1]
            assert _alive(new_worker)

            started = time.monotonic()
            supervisor.send_signal(signal.SIGTERM)  # as Ctrl+C or a service manager stops it
            assert supervisor.wait(15) == 0
            elapsed = time.monotonic() - started
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
    text = stderr.read_text()
    assert elapsed < 8, elapsed
    assert "worker still running after 2 s: killed" in text  # it ignored SIGTERM
    assert not _alive(web) and not _alive(new_worker)
    assert (tmp_path / "web.log").exists() and (tmp_path / "worker.log").exists()
