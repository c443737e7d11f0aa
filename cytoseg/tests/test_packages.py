"""Model packages (``cytoseg.backends.packages``): what may reach a loader, and what never does.

No Django here: the checks are part of the model library.
"""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from cytoseg.backends.packages import (
    PackageError,
    archive_unpack,
    nnunet_checkpoint_load,
    nnunet_plans_check,
    package_check,
    package_files,
    package_prepare,
    package_single_file,
)
from cytoseg.tests.model_files import (
    NNUNET_DATASET,
    cellpose_weights,
    nnunet_checkpoint,
    nnunet_package,
    nnunet_plans,
)


class Marker:
    """Unpickling this creates a file: proof that a loader ran code from a model file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _zip(members: dict[str, bytes], *, link: str | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    buffer.seek(0)
    return buffer


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# --- archives ----------------------------------------------------------------------------------


def test_archive_unpacks_and_strips_one_top_folder(tmp_path: Path) -> None:
    archive_unpack(_zip({"model/plans.json": b"{}", "model/fold_0/a.txt": b"x"}), tmp_path, max_bytes=1000)
    assert package_files(tmp_path) == ["fold_0/a.txt", "plans.json"]


@pytest.mark.parametrize(
    ("members", "link", "message"),
    [
        ({"../escape.json": b"{}"}, None, "'..'"),
        ({"a/../../escape.json": b"{}"}, None, "'..'"),
        ({"/etc/cron.d/x.json": b"{}"}, None, "absolute"),
        ({"C:/x.json": b"{}"}, None, "absolute"),
        ({"a\\b.json": b"{}"}, None, "backslash"),
        ({"evil.pkl": b"x"}, None, "pickle"),
        ({"run.py": b"import os"}, None, "not accepted"),
        ({"a.json": b"{}"}, "link.json", "links"),
    ],
)
def test_archive_refuses_what_could_escape_or_run(
    tmp_path: Path, members: dict[str, bytes], link: str | None, message: str
) -> None:
    with pytest.raises(PackageError, match=message):
        archive_unpack(_zip(members, link=link), tmp_path / "out", max_bytes=10_000)
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "out").exists()


def test_archive_counts_bytes_while_unpacking(tmp_path: Path) -> None:
    bomb = _zip({"big.txt": b"0" * 5_000_000})  # compresses to a few kB
    with pytest.raises(PackageError, match="more than 100000 bytes"):
        archive_unpack(bomb, tmp_path, max_bytes=100_000)
    with pytest.raises(PackageError, match="not a zip"):
        archive_unpack(io.BytesIO(b"not a zip"), tmp_path, max_bytes=100)
    with pytest.raises(PackageError, match="at most 2"):
        archive_unpack(_zip({"a.txt": b"", "b.txt": b"", "c.txt": b""}), tmp_path, max_bytes=100, max_files=2)


def test_package_files_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "plans.json").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="links"):
        package_files(tmp_path)


# --- torch files and nnU-Net -------------------------------------------------------------------


def test_a_pickled_object_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = _write(tmp_path / "pkg", nnunet_package())
    torch.save(
        {
            "network_weights": {"w": torch.zeros(1)},
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "2d"},
            "x": Marker(marker),
        },
        root / "fold_all" / "checkpoint_final.pth",
    )
    for check in (lambda: package_check("nnunet", root), lambda: package_prepare("nnunet", root)):
        with pytest.raises(PackageError, match="weights_only"):
            check()
    assert not marker.exists()


def test_nnunet_checkpoint_contents_are_checked(tmp_path: Path) -> None:
    plans = nnunet_plans()
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(nnunet_checkpoint())
    loaded = nnunet_checkpoint_load(path, plans=plans)
    assert loaded["trainer_name"] == "nnUNetTrainer" and loaded["inference_allowed_mirroring_axes"] == (0, 1)
    for changes, message in (
        ({"trainer_name": "os.system"}, "not an nnU-Net trainer"),
        ({"init_args": {"configuration": "3d_fullres"}}, "configuration"),
        ({"network_weights": {"w": [1, 2]}}, "state_dict"),
        ({"inference_allowed_mirroring_axes": "all"}, "mirroring"),
    ):
        path.write_bytes(nnunet_checkpoint(**changes))
        with pytest.raises(PackageError, match=message):
            nnunet_checkpoint_load(path, plans=plans)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: _arch(p).update(network_class_name="os.system"), "network_class_name"),
        (lambda p: _arch(p)["arch_kwargs"].update(nonlin="subprocess.Popen"), "nonlin"),
        (lambda p: _arch(p)["_kw_requires_import"].append("features_per_stage"), "imports"),
        (lambda p: _arch(p)["arch_kwargs"].update(conv_op=None), "conv_op"),
        (lambda p: _conf(p).update(preprocessor_name="../../evil"), "preprocessor_name"),
        (lambda p: _conf(p).update(resampling_fn_data="eval"), "resampling_fn_data"),
        (lambda p: _conf(p).update(normalization_schemes=["Exec"]), "normalization_schemes"),
        (lambda p: p.update(label_manager="Anything"), "label_manager"),
        (lambda p: _conf(p).update(UNet_class_name="PlainConvUNet"), "old plans format"),
        (lambda p: p.update(configurations={}), "no configurations"),
    ],
)
def test_plans_may_only_name_allowed_classes(change: Any, message: str) -> None:
    plans = nnunet_plans()
    nnunet_plans_check(plans, NNUNET_DATASET)
    change(plans)
    with pytest.raises(PackageError, match=message) as err:
        nnunet_plans_check(plans, NNUNET_DATASET)
    assert err.value.file == "plans.json"


def _conf(plans: dict[str, Any]) -> dict[str, Any]:
    return plans["configurations"]["2d"]


def _arch(plans: dict[str, Any]) -> dict[str, Any]:
    return _conf(plans)["architecture"]


def test_dataset_json_is_checked() -> None:
    for dataset, message in (
        ({**NNUNET_DATASET, "labels": {"cell": [1, 2]}}, "labels"),
        ({**NNUNET_DATASET, "regions_class_order": [1]}, "region"),
        ({**NNUNET_DATASET, "overwrite_image_reader_writer": "os.system"}, "overwrite_image_reader_writer"),
    ):
        with pytest.raises(PackageError, match=message) as err:
            nnunet_plans_check(nnunet_plans(), dataset)
        assert err.value.file == "dataset.json"


# --- packages by kind --------------------------------------------------------------------------


def test_package_check_by_kind(tmp_path: Path) -> None:
    nnunet = _write(tmp_path / "nnunet", nnunet_package())
    package_check("nnunet", nnunet)
    cellpose = _write(tmp_path / "cellpose", {"cellpose.pth": cellpose_weights(), "cellpose.json": b"{}"})
    package_check("cellpose", cellpose)
    two = _write(
        tmp_path / "two",
        {**{f"nnunet/{k}": v for k, v in nnunet_package().items()}, "cellpose/cellpose.pth": cellpose_weights()},
    )
    package_check("two_stage", two)
    with pytest.raises(PackageError) as err:
        package_check("two_stage", nnunet)
    assert err.value.file == "nnunet/"
    small = io.BytesIO()
    from cellpose.resnet_torch import CPnet

    torch.save(CPnet([3, 8, 16, 32, 64], 3, 3).state_dict(), small)
    with pytest.raises(PackageError, match="does not fit Cellpose 3's network"):
        package_check("cellpose", _write(tmp_path / "small", {"cellpose.pth": small.getvalue()}))
    with pytest.raises(PackageError, match="not a Cellpose 3 model"):
        package_check("cellpose", _write(tmp_path / "wrong", {"cellpose.pth": _state_bytes()}))
    refinement = _write(tmp_path / "ref", {"refinement.pt": _state_bytes(), "base/plans.json": b"{"})
    with pytest.raises(PackageError) as err:  # its base is checked like an nnU-Net of its own
        package_check("refinement", refinement, {"base": "nnunet"})
    assert err.value.file == "base/plans.json"
    # any other torch file in a package must load weights-only too
    (nnunet / "notes.pt").write_bytes(_pickle_bytes(tmp_path / "ran"))
    with pytest.raises(PackageError) as err:
        package_check("nnunet", nnunet)
    assert err.value.file == "notes.pt" and not (tmp_path / "ran").exists()


def test_prepare_sanitises_nnunet_checkpoints(tmp_path: Path) -> None:
    import numpy as np

    raw = io.BytesIO()
    torch.save(
        {
            "network_weights": {"w": torch.zeros(2)},
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "2d"},
            "optimizer_state": {"lr": np.float64(0.01)},
        },
        raw,
    )
    root = _write(tmp_path / "pkg", {**nnunet_package(), "fold_all/checkpoint_final.pth": raw.getvalue()})
    package_prepare("nnunet", root)
    loaded = torch.load(root / "fold_all" / "checkpoint_final.pth", weights_only=True)
    assert "optimizer_state" not in loaded and json.loads((root / "plans.json").read_text())


def test_single_file_uploads() -> None:
    assert package_single_file("cellpose", "model.pth") == "cellpose.pth"
    assert package_single_file("refinement", "weights.pt") == "refinement.pt"
    with pytest.raises(PackageError, match="zip"):
        package_single_file("nnunet", "checkpoint_final.pth")
    with pytest.raises(PackageError):
        package_single_file("cellpose", "model.exe")


def _state_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)
    return buffer.getvalue()


def _pickle_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": Marker(marker)}, buffer)
    return buffer.getvalue()
