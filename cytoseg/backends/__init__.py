"""Segmentation backends and their per-process registry (Django-free).

Backends are registered by name as ``"module:Class"`` import strings and are
imported only when first asked for, so that importing this package never
pulls in torch, nnU-Net or Cellpose. ``backend_get`` keeps a small LRU of
constructed backends so that a worker loads a model once, not once per image.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytoseg.backends.base import (
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
    "backend_settings_class",
    "backend_settings_errors",
]

# name -> "module:Class". The heavy backends live in modules that import torch
# at their top; they are imported on first use only.
BACKEND_PATHS: dict[str, str] = {
    "watershed": "cytoseg.backends.watershed:WatershedBackend",
    "region_growing": "cytoseg.backends.region_growing:RegionGrowingBackend",
    "nnunet": "cytoseg.backends.nnunet:NnUNetBackend",
    "cellpose": "cytoseg.backends.cellpose:CellposeBackend",
    "two_stage": "cytoseg.backends.two_stage:TwoStageBackend",
    "refinement": "cytoseg.backends.refinement:RefinementBackend",
}

# name -> "module:Class" of the backend's settings dataclass. These modules import no torch,
# so the web process validates settings without loading a model library.
SETTINGS_PATHS: dict[str, str] = {
    "watershed": "cytoseg.backends.watershed:WatershedSettings",
    "region_growing": "cytoseg.backends.region_growing:RegionGrowingSettings",
    "nnunet": "cytoseg.backends.settings:NnUNetSettings",
    "cellpose": "cytoseg.backends.settings:CellposeSettings",
    "two_stage": "cytoseg.backends.settings:TwoStageSettings",
    "refinement": "cytoseg.backends.settings:RefinementSettings",
}
PATHS_REFUSED = "server paths are not accepted: a model's files are its uploaded or trained artifacts"

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


def backend_register(name: str, target: str | type[SegmentationBackend], *, settings: str | None = None) -> None:
    """Register (or replace) a backend by import string or by class.

    ``settings`` is the ``"module:Class"`` of its settings dataclass (see
    :func:`backend_settings_errors`); without one, the backend takes no settings.
    """
    if settings is not None:
        SETTINGS_PATHS[name] = settings
    else:
        SETTINGS_PATHS.pop(name, None)
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
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(backend_names())}") from None


def backend_settings_class(name: str) -> type[Any] | None:
    """The settings dataclass of backend ``name`` (None: it takes no settings)."""
    backend_class(name)  # unknown names are an error, not "no settings"
    path = SETTINGS_PATHS.get(name)
    if path is None:
        return None
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {name!r}: cannot import its settings {path}: {exc}") from exc
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise BackendError(f"backend {name!r}: {path} is not a dataclass")
    return cls


def backend_settings_errors(name: str, values: Any, *, allow_paths: bool = True) -> dict[str, str]:
    """What is wrong with ``values`` as settings of backend ``name``: ``{key: message}``.

    Every key is checked on its own, so each mistake is named (nested settings as
    ``"nnunet.tile_step_size"``; the object itself as ``""``). Unknown keys are errors.
    ``allow_paths=False`` refuses the settings that name files on this machine: the
    platform never takes them from its users.
    """
    cls = backend_settings_class(name)
    if not isinstance(values, Mapping):
        return {"": "must be an object"}
    if cls is None:
        return {str(k): f"unknown setting ({name} takes none)" for k in values}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors: dict[str, str] = {}
    for key, value in values.items():
        spec = fields.get(key)
        if spec is None:
            errors[str(key)] = f"unknown setting; known: {', '.join(sorted(fields))}"
            continue
        if spec.metadata.get("path") and not allow_paths:
            errors[key] = PATHS_REFUSED
            continue
        nested = spec.metadata.get("nested")
        source = spec.metadata.get("nested_from")
        if source is not None:
            nested = values.get(source)
            if nested is None:
                errors[key] = f"set {source} first: these are the settings of that backend"
                continue
            if str(nested) not in BACKEND_PATHS and not dict.__contains__(BACKENDS, nested):
                continue  # the source field's own check names the unknown backend
        if nested is not None and isinstance(value, Mapping):
            inner = backend_settings_errors(str(nested), value, allow_paths=allow_paths)
            errors.update({f"{key}.{k}" if k else key: v for k, v in inner.items()})
            continue
        try:
            cls(**{key: value})
        except (TypeError, ValueError) as exc:
            errors[key] = str(exc)
    for spec in fields.values():
        source = spec.metadata.get("nested_from")
        if source is None:
            continue
        wrapped = values.get(source)
        if wrapped is not None and source not in errors and wrapped not in BACKENDS:
            errors[source] = f"unknown backend {wrapped!r}; known: {', '.join(backend_names())}"
    return errors


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
