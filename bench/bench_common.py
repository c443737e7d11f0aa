"""Pieces the benchmark scripts share (imported as a sibling module: bench/ is not a package)."""

from __future__ import annotations

import argparse


def size_arg(text: str) -> tuple[int, int]:
    """``"ROWSxCOLS"`` -> (rows, cols)."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, got {text!r}") from None
    return rows, cols
