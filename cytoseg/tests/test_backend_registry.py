"""Backend registry, per-process cache, shared types and device choice."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cytoseg.backends as backends
from cytoseg.backends import (
    BACKEND_PATHS,
    BACKENDS,
    BackendError,
    Instance,
    Prediction,
    SegmentationBackend,
    backend_cache_clear,
    backend_cache_size,
    backend_class,
    backend_get,
    backend_names,
    backend_register,
)
from cytoseg.backends.base import (
    instances_from_label_map,
    label_map_from_instances,
    semantic_from_instances,
)
from cytoseg.device import device_default

REPO = Path(__file__).resolve().parents[2]


class _Counting(SegmentationBackend):
    """A trivial backend that counts how often it is constructed."""

    name = "counting"
    loads = 0

    def __init__(self, *, artifacts: Path | None, settings: Mapping[str, Any], device: str) -> None:
        super().__init__(artifacts=artifacts, settings=settings, device=device)
        type(self).loads += 1
        if settings.get("fail"):
            raise RuntimeError("weights missing")

    def predict(self, image: np.ndarray) -> Prediction:
        return Prediction(instances=[], semantic=None, timings={})


@pytest.fixture
def counting() -> Iterator[type[_Counting]]:
    backend_register("counting", _Counting)
    _Counting.loads = 0
    backend_cache_clear()
    yield _Counting
    backend_cache_clear()
    dict.pop(BACKENDS, "counting", None)


def test_registered_names_and_paths() -> None:
    expected = {
        "watershed": "cytoseg.backends.watershed:WatershedBackend",
        "region_growing": "cytoseg.backends.region_growing:RegionGrowingBackend",
        "nnunet": "cytoseg.backends.nnunet:NnUNetBackend",
        "cellpose": "cytoseg.backends.cellpose:CellposeBackend",
        "two_stage": "cytoseg.backends.two_stage:TwoStageBackend",
        "refinement": "cytoseg.backends.refinement:RefinementBackend",
    }
    for name, path in expected.items():
        assert BACKEND_PATHS[name] == path
        assert name in BACKENDS
    assert set(expected) <= set(backend_names())
    assert "nope" not in BACKENDS


def test_import_is_lazy() -> None:
    """Importing the package (and the classical backends) must not import torch."""
    code = (
        "import sys, cytoseg.backends as b; "
        "b.BACKENDS['watershed']; b.BACKENDS['region_growing']; "
        "import cytoseg.contours, cytoseg.device; "
        "print(sorted(m for m in ('torch', 'nnunetv2', 'cellpose', 'django') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


def test_lookup_imports_classical_backends() -> None:
    from cytoseg.backends.region_growing import RegionGrowingBackend
    from cytoseg.backends.watershed import WatershedBackend

    assert BACKENDS["watershed"] is WatershedBackend
    assert backend_class("region_growing") is RegionGrowingBackend
    assert BACKENDS.get("nope") is None
    with pytest.raises(BackendError, match="unknown backend"):
        backend_class("nope")


def test_bad_import_paths_raise_backend_error() -> None:
    backend_register("broken", "inference.no_such_module:Thing")
    backend_register("not_a_backend", "cytoseg.contours:ContourResult")
    try:
        with pytest.raises(BackendError, match="cannot import"):
            backend_class("broken")
        with pytest.raises(BackendError, match="not a SegmentationBackend"):
            backend_class("not_a_backend")
    finally:
        BACKEND_PATHS.pop("broken")
        BACKEND_PATHS.pop("not_a_backend")
    with pytest.raises(BackendError):
        backend_register("x", 42)  # type: ignore[arg-type]


def test_backend_get_caches_per_key(counting: type[_Counting], tmp_path: Path) -> None:
    a = backend_get(name="counting", artifacts=tmp_path, settings={"a": 1, "b": [1, 2]}, device="cpu")
    # Same key: equal settings in another order, the path as a string.
    b = backend_get(name="counting", artifacts=str(tmp_path), settings={"b": [1, 2], "a": 1}, device="cpu")
    assert a is b and counting.loads == 1
    assert a.artifacts == tmp_path.resolve() and a.device == "cpu"
    c = backend_get(name="counting", artifacts=tmp_path, settings={"a": 2, "b": [1, 2]}, device="cpu")
    d = backend_get(name="counting", artifacts=tmp_path, settings={"a": 1, "b": [1, 2]}, device="cuda")
    e = backend_get(name="counting", artifacts=None, settings=None, device="cpu")
    assert len({id(x) for x in (a, c, d, e)}) == 4 and counting.loads == 4
    backend_cache_clear()
    assert backend_cache_size() == 0
    assert backend_get(name="counting", artifacts=tmp_path, settings={"a": 1, "b": [1, 2]}, device="cpu") is not a


def test_backend_get_lru_eviction(counting: type[_Counting]) -> None:
    first = backend_get(name="counting", artifacts=None, settings={"k": 0}, device="cpu")
    for k in range(1, backends.CACHE_SIZE):
        backend_get(name="counting", artifacts=None, settings={"k": k}, device="cpu")
    # Touch the oldest so that k=1 becomes the least recently used.
    assert backend_get(name="counting", artifacts=None, settings={"k": 0}, device="cpu") is first
    backend_get(name="counting", artifacts=None, settings={"k": 99}, device="cpu")
    assert backend_cache_size() == backends.CACHE_SIZE
    assert backend_get(name="counting", artifacts=None, settings={"k": 0}, device="cpu") is first
    loads = counting.loads
    backend_get(name="counting", artifacts=None, settings={"k": 1}, device="cpu")  # evicted: reloads
    assert counting.loads == loads + 1


def test_backend_get_new_process_starts_empty(counting: type[_Counting], monkeypatch: pytest.MonkeyPatch) -> None:
    a = backend_get(name="counting", artifacts=None, settings={}, device="cpu")
    monkeypatch.setattr(backends, "_cache_pid", -1)  # as if forked
    assert backend_get(name="counting", artifacts=None, settings={}, device="cpu") is not a


def test_backend_get_wraps_load_errors(counting: type[_Counting]) -> None:
    with pytest.raises(BackendError, match="failed to load: weights missing"):
        backend_get(name="counting", artifacts=None, settings={"fail": True}, device="cpu")
    assert backend_cache_size() == 0
    with pytest.raises(BackendError, match="unknown backend"):
        backend_get(name="nope", artifacts=None, settings={}, device="cpu")


@pytest.mark.parametrize(
    ("name", "bad_settings"),
    [
        ("watershed", {"dist_fraction": 1.5}),
        ("watershed", {"opening_radius": -1}),
        ("watershed", {"opening_radius": 1.5}),
        ("watershed", {"erythrocyte_filter": "maybe"}),
        ("watershed", {"min_area": True}),
        ("watershed", {"no_such_setting": 1}),
        ("region_growing", {"erosion_radius": "2"}),
        ("region_growing", {"prob_threshold": 1.0}),
    ],
)
def test_invalid_settings_raise_backend_error(name: str, bad_settings: dict[str, Any]) -> None:
    # Not named `settings`: that would shadow pytest-django's fixture of that name.
    with pytest.raises(BackendError):
        backend_class(name)(artifacts=None, settings=bad_settings, device="cpu")


def test_settings_defaults_and_json_numbers() -> None:
    ws = backend_class("watershed")(
        artifacts=None, settings={"opening_radius": 3.0, "prob_threshold": "otsu"}, device="cpu"
    )
    cfg = ws.config  # type: ignore[attr-defined]
    assert cfg.opening_radius == 3 and isinstance(cfg.opening_radius, int)
    assert cfg.prob_threshold == "otsu"
    assert cfg.erythrocyte_filter == "label" and 0 < cfg.dist_fraction < 1 and cfg.min_area >= 0
    rg = backend_class("region_growing")(artifacts=None, settings={}, device="cpu")
    assert rg.config.erosion_radius == 2  # type: ignore[attr-defined]


def test_instance_helpers_roundtrip() -> None:
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[1:4, 2:6] = 1
    labels[6:10, 9:12] = 3  # ids need not be consecutive; touches the border
    labels[0, 0] = 4  # one pixel, below min_area
    insts = instances_from_label_map(labels, labels={3: 2}, scores={1: 0.5, 3: 1.5}, min_area=2)
    assert [(i.x0, i.y0, i.mask.shape, i.label) for i in insts] == [
        (2, 1, (3, 4), 1),
        (9, 6, (4, 3), 2),
    ]
    assert insts[0].score == 0.5 and insts[1].score == 1.0  # clipped to 0..1
    assert insts[0].area == 12 and insts[1].bbox == (9, 6, 12, 10)
    lm = label_map_from_instances(insts, height=10, width=12)
    assert np.array_equal(lm > 0, (labels > 0) & (labels != 4))
    sem = semantic_from_instances(insts, height=10, width=12)
    assert sem.dtype == np.uint8 and set(np.unique(sem)) == {0, 1, 2}
    assert sem[7, 10] == 2 and sem[2, 3] == 1
    assert instances_from_label_map(np.zeros((4, 4), np.int32)) == []


def test_instance_full_mask_clips_outside_image() -> None:
    inst = Instance(x0=-2, y0=3, mask=np.ones((4, 4), bool), label=1, score=1.0)
    full = inst.full_mask(height=5, width=5)
    assert full.sum() == 4  # 2 columns x 2 rows remain
    assert full[3:5, 0:2].all()
    assert not Instance(x0=10, y0=10, mask=np.ones((2, 2), bool), label=1, score=1).full_mask(height=5, width=5).any()


def test_device_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake torch modules: importing the real one would cost seconds per test run.
    def fake_torch(available: object) -> types.SimpleNamespace:
        def is_available() -> bool:
            if isinstance(available, Exception):
                raise available
            return bool(available)

        return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=is_available))

    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    assert device_default() == "cuda"
    monkeypatch.setitem(sys.modules, "torch", fake_torch(False))
    assert device_default() == "cpu"
    monkeypatch.setitem(sys.modules, "torch", fake_torch(RuntimeError("driver too old")))
    assert device_default() == "cpu"
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    assert device_default() == "cpu"
