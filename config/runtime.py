"""Process-level tuning applied by the WSGI entry point (and by benchmarks that stand in for it)."""

from __future__ import annotations

import gc


def gc_tune() -> None:
    """Move everything loaded at start-up out of the collector's reach and collect less often.

    A 270-cell save allocates hundreds of thousands of small objects (vertex lists), which with
    the default thresholds triggers full collections over every module Django, numpy and
    shapely loaded: they were the whole p95 tail of a save. Frozen start-up objects are never
    scanned again, and a larger young-generation threshold keeps collections rare.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
