"""Progress reports, and a tiny progress bar on stderr for the command line.

Long calls (uploads, exports, waiting for jobs) take ``progress=callback``; the callback gets a
:class:`Progress` each time there is news. The bar is written here rather than taken from a
package: it is forty lines, and the client stays at one dependency.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Progress:
    """Where a long call is: ``done`` of ``total`` ``unit`` (total None: not known yet).

    ``stage`` names the step (``upload``, ``export``, ``download``, ``training``); ``message`` is
    a line for people (the file being sent, the training epoch and loss).
    """

    stage: str
    done: float
    total: float | None
    unit: str = ""
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


ProgressCallback = Callable[[Progress], None]


def _human(value: float, unit: str) -> str:
    if unit != "B":
        return f"{value:g}{(' ' + unit) if unit else ''}"
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or suffix == "GiB":
            return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
        value /= 1024
    return f"{value:.1f} GiB"


class ProgressBar:
    """A one-line bar on a terminal (``stream``, stderr by default), redrawn in place; where the
    stream is not a terminal (a log file, a pipe), a plain line every ``step`` of the way instead.
    Use it as the ``progress`` callback; call :meth:`close` when done."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 30, step: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.step = step
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_fraction: float | None = None
        self._last_stage = ""
        self._open = False

    def __call__(self, progress: Progress) -> None:
        fraction = progress.fraction
        now = time.monotonic()
        if self.tty:
            final = fraction is not None and fraction >= 1.0
            if not final and now - self._last_draw < 0.1 and progress.stage == self._last_stage:
                return
            self.stream.write("\r\033[K" + self._line(progress))
            self._open = True
        else:
            new_stage = progress.stage != self._last_stage
            moved = (
                fraction is not None
                and (self._last_fraction is None or fraction - self._last_fraction >= self.step or fraction >= 1.0)
                and fraction != self._last_fraction
            )
            if not (new_stage or moved):
                return
            self._last_fraction = fraction
            self.stream.write(self._line(progress) + "\n")
        self._last_stage = progress.stage
        self._last_draw = now
        self.stream.flush()

    def _line(self, progress: Progress) -> str:
        fraction = progress.fraction
        amount = "" if progress.unit == "%" else _human(progress.done, progress.unit)
        if progress.total and amount:
            amount += f"/{_human(progress.total, progress.unit)}"
        if fraction is None:
            bar = "[" + " " * self.width + "]    ?"
        else:
            filled = round(fraction * self.width)
            bar = "[" + "#" * filled + "-" * (self.width - filled) + f"] {fraction * 100:3.0f}%"
        text = f"{progress.stage:<9} {bar}" + (f" {amount}" if amount else "")
        return text + (f"  {progress.message}" if progress.message else "")

    def close(self) -> None:
        """End the bar's line (on a terminal)."""
        if self.tty and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
