"""Choice of the torch device for inference (torch imported lazily)."""

from __future__ import annotations


def device_default() -> str:
    """``'cuda'`` when torch is importable and sees a GPU, else ``'cpu'``.

    torch is imported here, not at module level, so that web processes that
    never run a model do not pay for importing it.
    """
    try:
        import torch
    except ImportError:
        return "cpu"
    try:
        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # a broken CUDA install must not break CPU inference
        return "cpu"
