"""Segmentation backends and their per-process registry (Django-free).

Backends are registered by name as ``"module:Class"`` import strings and are
imported only when first asked for, so that importing this package never
pulls in torch, nnU-Net or Cellpose. ``backend_get`` keeps a small LRU of
constructed backends so that a worker loads a model once, not once per image.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inference.backends.base import (
    BackendError,
    Instance,
    Prediction,
    SegmentationBackend,
)

__all__ = [
    "BACKENDS",
    "BACKEND_PATHS",
    "BackendError",
    "Instance",
    "Prediction",
    "SegmentationBackend",
    "backend_cache_clear",
    "backend_cache_size",
    "backend_class",
    "backend_get",
    "backend_names",
    "backend_register",
]

# name -> "module:Class". The heavy backends live in modules that import torch
# at their top; they are imported on first use only.
BACKEND_PATHS: dict[str, str] = {
    "watershed": "inference.backends.watershed:WatershedBackend",
    "region_growing": "inference.backends.region_growing:RegionGrowingBackend",
    "nnunet": "inference.backends.nnunet:NnUNetBackend",
    "cellpose": "inference.backends.cellpose:CellposeBackend",
    "two_stage": "inference.backends.two_stage:TwoStageBackend",
    "refinement": "inference.backends.refinement:RefinementBackend",
}

CACHE_SIZE = 4  # a worker rarely serves more than a few model versions at once


def _import_backend(name: str, path: str) -> type[SegmentationBackend]:
    """Import ``"module:Class"`` and check that it is a backend class."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise BackendError(f"backend {name!r}: bad import path {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r}: cannot import {module_name}: {exc}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError as exc:
        raise BackendError(f"backend {name!r}: {module_name} has no {attr}") from exc
    if not (isinstance(cls, type) and issubclass(cls, SegmentationBackend)):
        raise BackendError(f"backend {name!r}: {path} is not a SegmentationBackend")
    return cls


class _LazyBackends(dict[str, type[SegmentationBackend]]):
    """A dict that imports a registered backend class the first time it is looked up.

    Membership and ``get`` also know the registered-but-not-yet-imported names,
    so ``"nnunet" in BACKENDS`` is true without importing torch.
    """

    def __missing__(self, key: str) -> type[SegmentationBackend]:
        path = BACKEND_PATHS.get(key)
        if path is None:
            raise KeyError(key)
        cls = _import_backend(key, path)
        self[key] = cls
        return cls

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in BACKEND_PATHS

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Like ``dict.get`` but imports a registered backend on first use."""
        try:
            return self[key]
        except KeyError:
            return default


BACKENDS: dict[str, type[SegmentationBackend]] = _LazyBackends()


def backend_names() -> list[str]:
    """All registered backend names (imported or not), sorted."""
    return sorted(set(BACKEND_PATHS) | set(dict.keys(BACKENDS)))


def backend_register(name: str, target: str | type[SegmentationBackend]) -> None:
    """Register (or replace) a backend by import string or by class."""
    if isinstance(target, str):
        BACKEND_PATHS[name] = target
        dict.pop(BACKENDS, name, None)  # re-import lazily from the new path
    elif isinstance(target, type) and issubclass(target, SegmentationBackend):
        BACKEND_PATHS.pop(name, None)
        dict.__setitem__(BACKENDS, name, target)
    else:
        raise BackendError(f"backend {name!r}: cannot register {target!r}")
    with _cache_lock:  # cached instances of the old class must not be served
        for key in [k for k in _cache if k[0] == name]:
            del _cache[key]


def backend_class(name: str) -> type[SegmentationBackend]:
    """The backend class registered under ``name``; BackendError if unknown."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(
            f"unknown backend {name!r}; known: {', '.join(backend_names())}"
        ) from None


def _freeze(value: Any) -> Any:
    """A hashable, order-independent stand-in for a settings value."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(_freeze(v)) for v in value))
    if isinstance(value, Path):
        return str(value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


_cache: OrderedDict[tuple[Any, ...], SegmentationBackend] = OrderedDict()
_cache_lock = threading.Lock()
_cache_pid = os.getpid()


def backend_get(
    *,
    name: str,
    artifacts: Path | str | None,
    settings: Mapping[str, Any] | None,
    device: str,
) -> SegmentationBackend:
    """Return a constructed backend, cached per process.

    The cache key is (name, resolved artifacts path, frozen settings, device);
    the least recently used of more than ``CACHE_SIZE`` entries is evicted.
    A forked child (Celery prefork) starts with an empty cache: a model loaded
    by the parent, a CUDA context above all, must not be shared across fork.
    """
    global _cache_pid
    cls = backend_class(name)
    art = Path(artifacts).expanduser().resolve() if artifacts is not None else None
    settings = dict(settings or {})
    key = (name, str(art) if art is not None else None, _freeze(settings), device)
    # The lock is held while constructing: two threads asking for the same
    # model must not load it twice (a GPU model may not fit twice).
    with _cache_lock:
        if _cache_pid != os.getpid():
            _cache.clear()
            _cache_pid = os.getpid()
        backend = _cache.get(key)
        if backend is not None:
            _cache.move_to_end(key)
            return backend
        try:
            backend = cls(artifacts=art, settings=settings, device=device)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"backend {name!r} failed to load: {exc}") from exc
        _cache[key] = backend
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return backend


def backend_cache_clear() -> None:
    """Drop every cached backend (tests, model reloads, freeing GPU memory)."""
    with _cache_lock:
        _cache.clear()


def backend_cache_size() -> int:
    """Number of backends currently cached in this process."""
    with _cache_lock:
        return len(_cache)
