"""Django-free model trainers (nnU-Net v2, Cellpose 3, the refinement net).

Each trainer module imports its heavy dependencies (torch, nnunetv2, cellpose)
at its top, so import the submodule you need; this package itself stays light.
Shared here: the cancellation exception and the progress callback type that
every trainer uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CancelFn", "ProgressFn", "TrainingCancelled"]

# A trainer calls this with a small JSON-serialisable dict (keys documented per
# trainer; always "phase", and "epoch"/"epochs" once training runs).
ProgressFn = Callable[[dict[str, Any]], None]
# Polled between iterations/epochs; True stops the training with TrainingCancelled.
CancelFn = Callable[[], bool]


class TrainingCancelled(Exception):
    """Raised by a trainer when its ``should_cancel`` callback returned True."""
