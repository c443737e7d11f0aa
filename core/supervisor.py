"""The process supervisor of ``bin/run`` (Django-free): keeps the web server, the workers and
beat running, and stops all of them promptly.

``python -m core.supervisor [--log-dir D] [--grace S] NAME=COMMAND ...``

* Each command runs in a process group of its own, its output in ``D/NAME.log``.
* A process that exits while the supervisor runs is restarted (after 1 s, doubling up to 30 s
  while it keeps crashing within a minute of its start); the others keep running. Each exit
  and restart is logged on stderr.
* SIGTERM or SIGINT (Ctrl+C) stops everything: SIGTERM to every group, then, after ``--grace``
  seconds (10), SIGKILL to the groups still alive (a Celery worker in warm shutdown waits for its
  task; its late-acknowledged task is delivered again later, and the watchdogs take care of
  pre-segmentations and training jobs it leaves behind). The supervisor exits once every
  group is gone.

Why our own: the run command must work from a fresh checkout with nothing but the project's
requirements, and the policy is this page.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESTART_MIN, RESTART_MAX, STABLE_AFTER = 1.0, 30.0, 60.0


def log(message: str) -> None:
    print(f"[supervisor {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Program:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.started = time.monotonic()
        self.restart_at = None
        log(f"started {self.name} (pid {self.process.pid})")

    def signal_group(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def group_alive(self) -> bool:
        if self.process is None:
            return False
        self.process.poll()
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[Program]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-dir", type=Path, default=Path("var/log"))
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("programs", nargs="+", metavar="NAME=COMMAND")
    args = parser.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    programs = []
    for spec in args.programs:
        name, sep, command = spec.partition("=")
        if not sep or not name.isidentifier() or not command.strip():
            parser.error(f"not NAME=COMMAND: {spec!r}")
        programs.append(Program(name, shlex.split(command), args.log_dir / f"{name}.log"))
    return args, programs


def stop(programs: list[Program], grace: float) -> None:
    for program in programs:
        program.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.group_alive() for p in programs):
        time.sleep(0.1)
    for program in programs:
        if program.group_alive():
            log(f"{program.name} still running after {grace:g} s: killed")
            program.signal_group(signal.SIGKILL)
            try:
                os.killpg(program.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
    for program in programs:
        if program.process is not None:
            try:
                program.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def main(argv: list[str] | None = None) -> int:
    args, programs = parse(sys.argv[1:] if argv is None else argv)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for program in programs:
        program.start()
    while not stopping:
        now = time.monotonic()
        for program in programs:
            process = program.process
            if program.restart_at is None and process is not None and process.poll() is not None:
                # a crash soon after the start doubles the wait; a long good run resets it
                if now - program.started > STABLE_AFTER:
                    program.backoff = RESTART_MIN
                log(f"{program.name} exited with {process.returncode}; restarting in {program.backoff:g} s")
                program.signal_group(signal.SIGKILL)  # what it left behind in its group
                program.restart_at = now + program.backoff
                program.backoff = min(program.backoff * 2, RESTART_MAX)
            if program.restart_at is not None and now >= program.restart_at:
                program.restarts += 1
                program.start()
        time.sleep(0.2)
    log(f"signal {stopping[0]}: stopping {', '.join(p.name for p in programs)}")
    stop(programs, args.grace)
    log("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
