"""Model packages: the files of one model version, checked before anything loads them (Django-free).

A model package is a folder: for nnU-Net ``plans.json``, ``dataset.json`` and
``fold_<f>/checkpoint_final.pth``; for Cellpose ``cellpose.pth`` (+ ``cellpose.json``); for the
two-stage model ``nnunet/`` and ``cellpose/``; for the refinement model ``refinement.pt`` and the
base model in ``base/``. Packages reach the platform only as uploads (a zip archive or one torch
file) or as training outputs. Three things keep a package from running code on a worker:

- every torch file is read with ``torch.load(weights_only=True)``: tensors and plain containers
  only; nnU-Net's own checkpoint format needs numpy's scalar reconstructor too, which is the one
  global allowed (:func:`torch_weights_load`);
- nnU-Net resolves class names written in ``plans.json`` by importing them
  (``pydoc.locate``), so a plans file is checked against an allow-list of the architectures,
  layers, preprocessors and resampling functions it may name (:func:`nnunet_plans_check`);
- archives are unpacked only into a fresh folder, member by member: no absolute paths, no
  ``..``, no links, no pickles, bounded size and count (:func:`archive_unpack`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cytoseg.backends.base import BackendError

__all__ = [
    "ALLOWED_SUFFIXES",
    "CELLPOSE_FILE",
    "PACKAGE_KINDS",
    "REFINEMENT_FILE",
    "PackageError",
    "archive_unpack",
    "cellpose_file_check",
    "folder_remove",
    "nnunet_checkpoint_load",
    "nnunet_checkpoint_sanitize",
    "nnunet_folder_check",
    "nnunet_plans_check",
    "package_check",
    "package_files",
    "package_prepare",
    "package_single_file",
    "torch_weights_load",
]

CELLPOSE_FILE = "cellpose.pth"
CELLPOSE_META = "cellpose.json"
REFINEMENT_FILE = "refinement.pt"
# Kinds whose versions carry files; watershed and region growing need none.
PACKAGE_KINDS = ("nnunet", "cellpose", "two_stage", "refinement")
ALLOWED_SUFFIXES = (".json", ".pth", ".pt", ".txt", ".png", ".csv", ".log")
TORCH_SUFFIXES = (".pth", ".pt")
MAX_FILES = 500


class PackageError(BackendError):
    """A model package is malformed or unsafe; ``file`` names the offending file, if one."""

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(f"{file}: {message}" if file else message)
        self.message = message
        self.file = file


# --- archives ----------------------------------------------------------------------------------


def _member_path(name: str) -> PurePosixPath:
    """The relative path of an archive member, or PackageError when it could escape the folder."""
    if "\x00" in name or "\\" in name:
        raise PackageError("names with backslashes or NUL are not accepted", file=name)
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise PackageError("absolute paths are not accepted", file=name)
    if any(part == ".." for part in path.parts):
        raise PackageError("'..' is not accepted in archive paths", file=name)
    return path


def _suffix_check(relative: str) -> None:
    suffix = PurePosixPath(relative).suffix.lower()
    if suffix in (".pkl", ".pickle"):
        raise PackageError("pickle files are not accepted", file=relative)
    if suffix not in ALLOWED_SUFFIXES:
        raise PackageError(
            f"files of this type are not accepted (allowed: {', '.join(ALLOWED_SUFFIXES)})", file=relative
        )


def archive_unpack(source: IO[bytes] | Path, dest: Path, *, max_bytes: int, max_files: int = MAX_FILES) -> None:
    """Unpack a zip archive into the empty folder ``dest``, refusing anything unsafe.

    A single top-level folder shared by every member is stripped (people zip the model folder
    itself). Sizes are counted while writing, not trusted from the archive's directory, so a zip
    bomb stops at ``max_bytes``. On error ``dest`` is left for the caller to remove.
    """
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"not a zip archive ({exc})") from exc
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if not members:
            raise PackageError("the archive is empty")
        if len(members) > max_files:
            raise PackageError(f"the archive has {len(members)} files; at most {max_files} are accepted")
        paths = []
        for info in members:
            path = _member_path(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise PackageError("links are not accepted", file=info.filename)
            if info.flag_bits & 0x1:
                raise PackageError("encrypted files are not accepted", file=info.filename)
            _suffix_check(str(path))
            paths.append(path)
        tops = {p.parts[0] for p in paths}
        strip = len(tops) == 1 and all(len(p.parts) > 1 for p in paths)
        written = 0
        for info, path in zip(members, paths, strict=True):
            relative = PurePosixPath(*path.parts[1:]) if strip else path
            target = dest.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, target.open("xb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > max_bytes:
                        raise PackageError(f"the archive unpacks to more than {max_bytes} bytes")
                    out.write(block)


def package_files(root: Path) -> list[str]:
    """Relative paths of every file under ``root`` (a file: its own name), sorted.

    Links are refused: a link inside a package could point anywhere on the machine.
    """
    root = Path(root)
    if root.is_symlink():
        raise PackageError("links are not accepted", file=root.name)
    if root.is_file():
        return [root.name]
    out = []
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            raise PackageError("links are not accepted", file=relative)
        if path.is_file():
            out.append(relative)
        elif not path.is_dir():
            raise PackageError("only plain files are accepted", file=relative)
    return out


# --- torch files -------------------------------------------------------------------------------


def _numpy_globals() -> list[Any]:
    """numpy's scalar reconstructor and dtype classes: what nnU-Net checkpoints hold besides
    tensors. torch documents allowing them as the way to read numpy scalars weights-only."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)}
    return [scalar, np.dtype, *dtypes]


def torch_weights_load(path: Path, *, numpy_scalars: bool = False, relative: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, as PackageError when refused.

    ``numpy_scalars`` additionally allows numpy scalars and dtypes (nnU-Net checkpoints).
    """
    import torch

    try:
        if numpy_scalars:
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(Path(path), map_location="cpu", weights_only=True)
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PackageError(
            f"does not load with torch.load(weights_only=True): {exc}", file=relative or Path(path).name
        ) from exc


def _state_dict_check(state: Any, *, relative: str) -> dict[str, Any]:
    import torch

    if not isinstance(state, Mapping) or not state:
        raise PackageError("is not a state_dict (a mapping of names to tensors)", file=relative)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PackageError("is not a state_dict (a mapping of names to tensors)", file=relative)
    return dict(state)


# --- nnU-Net -----------------------------------------------------------------------------------

NNUNET_NETWORKS = (
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
)
# Values the names in ``_kw_requires_import`` may take (nnU-Net imports them with pydoc.locate).
NNUNET_IMPORTS: dict[str, tuple[str | None, ...]] = {
    "conv_op": ("torch.nn.modules.conv.Conv2d", "torch.nn.Conv2d"),
    "norm_op": (
        "torch.nn.modules.instancenorm.InstanceNorm2d",
        "torch.nn.InstanceNorm2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.BatchNorm2d",
    ),
    "dropout_op": (None, "torch.nn.modules.dropout.Dropout2d", "torch.nn.Dropout2d"),
    "nonlin": (
        "torch.nn.LeakyReLU",
        "torch.nn.modules.activation.LeakyReLU",
        "torch.nn.ReLU",
        "torch.nn.modules.activation.ReLU",
    ),
}
# Names nnU-Net looks up inside its own packages.
NNUNET_PREPROCESSORS = ("DefaultPreprocessor",)
NNUNET_NORMALIZATIONS = (
    "ZScoreNormalization",
    "RGBTo01Normalization",
    "RescaleTo01Normalization",
    "NoNormalization",
    "CTNormalization",
)
NNUNET_RESAMPLING = (
    "resample_data_or_seg_to_shape",
    "no_resampling_hack",
    "resample_torch_fornnunet",
    "resample_torch_simple",
)
NNUNET_LABEL_MANAGERS = ("LabelManager",)
NNUNET_READERS = ("NaturalImage2DIO", "SimpleITKIO", "NibabelIO", "NibabelIOWithReorient", "Tiff3DIO")
_TRAINER_NAME = re.compile(r"^nnUNetTrainer[A-Za-z0-9_]*$")


def _plain_json(value: Any, where: str, file: str) -> None:
    """JSON scalars, lists and objects only (a plans file is data, not code)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _plain_json(v, f"{where}.{k}", file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_json(v, f"{where}[{i}]", file)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise PackageError(f"{where} is not plain JSON", file=file)


def _choice(value: Any, allowed: tuple[Any, ...], where: str, file: str) -> None:
    if value not in allowed:
        raise PackageError(f"{where} {value!r} is not accepted (allowed: {', '.join(map(str, allowed))})", file=file)


def nnunet_plans_check(plans: Any, dataset: Any, *, prefix: str = "") -> None:
    """Check nnU-Net's ``plans.json`` and ``dataset.json`` against the allow-lists above.

    Every name nnU-Net would import or look up must be one of the allowed ones; everything else
    in the files must be plain data.
    """
    plans_file, dataset_file = f"{prefix}plans.json", f"{prefix}dataset.json"
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict) or not plans["configurations"]:
        raise PackageError("has no configurations", file=plans_file)
    _plain_json(plans, "plans", plans_file)
    if "label_manager" in plans:
        _choice(plans["label_manager"], NNUNET_LABEL_MANAGERS, "label_manager", plans_file)
    if "image_reader_writer" in plans:
        _choice(plans["image_reader_writer"], NNUNET_READERS, "image_reader_writer", plans_file)
    for name, conf in plans["configurations"].items():
        where = f"configurations.{name}"
        if not isinstance(conf, dict):
            raise PackageError(f"{where} is not an object", file=plans_file)
        parent = conf.get("inherits_from")
        if parent is not None and parent not in plans["configurations"]:
            raise PackageError(f"{where}.inherits_from names an unknown configuration", file=plans_file)
        if "preprocessor_name" in conf:
            _choice(conf["preprocessor_name"], NNUNET_PREPROCESSORS, f"{where}.preprocessor_name", plans_file)
        for scheme in conf.get("normalization_schemes") or []:
            _choice(scheme, NNUNET_NORMALIZATIONS, f"{where}.normalization_schemes", plans_file)
        for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
            if key in conf:
                _choice(conf[key], NNUNET_RESAMPLING, f"{where}.{key}", plans_file)
        if "UNet_class_name" in conf:
            raise PackageError(f"{where} uses nnU-Net's old plans format; re-plan it with nnU-Net v2", file=plans_file)
        arch = conf.get("architecture")
        if arch is None:
            if parent is None:
                raise PackageError(f"{where} has no architecture", file=plans_file)
            continue
        if not isinstance(arch, dict) or not isinstance(arch.get("arch_kwargs"), dict):
            raise PackageError(f"{where}.architecture is malformed", file=plans_file)
        _choice(arch.get("network_class_name"), NNUNET_NETWORKS, f"{where}.architecture.network_class_name", plans_file)
        imports = arch.get("_kw_requires_import") or []
        if not isinstance(imports, list):
            raise PackageError(f"{where}.architecture._kw_requires_import is malformed", file=plans_file)
        for key in imports:
            if key not in NNUNET_IMPORTS:
                raise PackageError(f"{where}.architecture imports {key!r}, which is not accepted", file=plans_file)
        # Names nnU-Net does not import must not look like imports either (they would be passed
        # to the network as strings), and those it does import must be allowed.
        for key, allowed in NNUNET_IMPORTS.items():
            if key in arch["arch_kwargs"]:
                _choice(arch["arch_kwargs"][key], allowed, f"{where}.architecture.arch_kwargs.{key}", plans_file)
                if key not in imports and arch["arch_kwargs"][key] is not None:
                    raise PackageError(f"{where}.architecture.arch_kwargs.{key} is not imported", file=plans_file)
    if not isinstance(dataset, dict):
        raise PackageError("is not an object", file=dataset_file)
    _plain_json(dataset, "dataset", dataset_file)
    labels = dataset.get("labels")
    if (
        not isinstance(labels, dict)
        or not labels
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values())
    ):
        raise PackageError("labels must map names to integer label ids (regions are not supported)", file=dataset_file)
    if "regions_class_order" in dataset:
        raise PackageError("region-based models are not supported", file=dataset_file)
    if "overwrite_image_reader_writer" in dataset:
        _choice(dataset["overwrite_image_reader_writer"], NNUNET_READERS, "overwrite_image_reader_writer", dataset_file)


def nnunet_checkpoint_load(path: Path, *, plans: Mapping[str, Any], relative: str | None = None) -> dict[str, Any]:
    """Load an nnU-Net checkpoint weights-only and check what inference reads from it.

    Returns ``{network_weights, trainer_name, configuration, inference_allowed_mirroring_axes}``.
    """
    file = relative or Path(path).name
    checkpoint = torch_weights_load(path, numpy_scalars=True, relative=file)
    if not isinstance(checkpoint, Mapping):
        raise PackageError("is not an nnU-Net checkpoint", file=file)
    weights = _state_dict_check(checkpoint.get("network_weights"), relative=f"{file}: network_weights")
    trainer = checkpoint.get("trainer_name")
    if not isinstance(trainer, str) or not _TRAINER_NAME.match(trainer):
        raise PackageError(f"trainer_name {trainer!r} is not an nnU-Net trainer", file=file)
    init_args = checkpoint.get("init_args")
    configuration = init_args.get("configuration") if isinstance(init_args, Mapping) else None
    if not isinstance(configuration, str) or configuration not in plans.get("configurations", {}):
        raise PackageError(f"names configuration {configuration!r}, which plans.json does not have", file=file)
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    if axes is not None:
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and 0 <= a < 3 for a in axes):
            raise PackageError("inference_allowed_mirroring_axes is malformed", file=file)
        axes = tuple(int(a) for a in axes)
    return {
        "network_weights": weights,
        "trainer_name": trainer,
        "configuration": configuration,
        "inference_allowed_mirroring_axes": axes,
    }


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists, devices as text (recursively)."""
    import numpy as np
    import torch

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


NNUNET_CHECKPOINT_KEYS = (
    "network_weights",
    "trainer_name",
    "init_args",
    "inference_allowed_mirroring_axes",
    "current_epoch",
)


def nnunet_checkpoint_sanitize(path: Path, *, relative: str | None = None) -> None:
    """Rewrite an nnU-Net checkpoint to what inference needs, loadable with plain
    ``weights_only=True``: weights, trainer name, init args, mirroring axes; the optimiser state
    and logs are dropped and numpy scalars become Python numbers. Never unpickles anything else.
    """
    import torch

    file = relative or Path(path).name
    try:
        plain = torch_weights_load(path, relative=file)
    except PackageError:
        plain = None
    if isinstance(plain, Mapping) and "network_weights" in plain and set(plain) <= set(NNUNET_CHECKPOINT_KEYS):
        return  # already sanitised: rewriting would change the file's recorded sha256
    checkpoint = torch_weights_load(path, numpy_scalars=True, relative=file)
    if not isinstance(checkpoint, Mapping) or "network_weights" not in checkpoint:
        raise PackageError("is not an nnU-Net checkpoint", file=file)
    kept = {
        k: _plain(checkpoint[k]) if k != "network_weights" else checkpoint[k]
        for k in NNUNET_CHECKPOINT_KEYS
        if k in checkpoint
    }
    tmp = Path(path).with_suffix(".tmp")
    torch.save(kept, tmp)
    os.replace(tmp, path)
    torch_weights_load(path, relative=file)


def _json_file(path: Path, relative: str) -> Any:
    if not path.is_file():
        raise PackageError("is missing", file=relative)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageError(f"is not valid JSON: {exc}", file=relative) from exc


def nnunet_folder_check(folder: Path, *, prefix: str = "") -> set[str]:
    """Check an nnU-Net model folder: plans, dataset and every fold's checkpoints (returned)."""
    plans = _json_file(folder / "plans.json", f"{prefix}plans.json")
    dataset = _json_file(folder / "dataset.json", f"{prefix}dataset.json")
    nnunet_plans_check(plans, dataset, prefix=prefix)
    checkpoints = sorted(folder.glob("fold_*/checkpoint_*.pth"))
    if not checkpoints:
        raise PackageError("no fold_*/checkpoint_final.pth", file=prefix.rstrip("/") or "nnunet")
    out = set()
    for path in checkpoints:
        relative = f"{prefix}{path.relative_to(folder)}"
        nnunet_checkpoint_load(path, plans=plans, relative=relative)
        out.add(relative)
    return out


# --- Cellpose and refinement -------------------------------------------------------------------

CELLPOSE_FIRST_KEY = "downsample.down.res_down_0.conv.conv_0.0.weight"


def cellpose_file_check(path: Path, *, relative: str) -> None:
    """A Cellpose 3 model: a weights-only state_dict of CPnet (and a JSON ``cellpose.json``)."""
    state = _state_dict_check(torch_weights_load(path, relative=relative), relative=relative)
    if CELLPOSE_FIRST_KEY not in state:
        raise PackageError("is not a Cellpose 3 model (CPnet weights)", file=relative)
    # The backend builds Cellpose's default network (CellposeModel, nbase 32..256) for the
    # file's input channels: weights of another shape would only fail later, on a worker.
    from cellpose.resnet_torch import CPnet

    nchan = int(state[CELLPOSE_FIRST_KEY].shape[0])
    expected = {k: tuple(v.shape) for k, v in CPnet([nchan, 32, 64, 128, 256], 3, 3).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise PackageError(
            f"does not fit Cellpose 3's network ({len(wrong)} tensors differ, e.g. {wrong[0]})", file=relative
        )
    meta = path.with_name(CELLPOSE_META)
    if meta.exists():
        data = _json_file(meta, relative.replace(CELLPOSE_FILE, CELLPOSE_META))
        if not isinstance(data, dict):
            raise PackageError("is not an object", file=relative.replace(CELLPOSE_FILE, CELLPOSE_META))


def _sub(root: Path, name: str, prefix: str) -> Path:
    sub = root / name
    if not sub.is_dir():
        raise PackageError("is missing", file=f"{prefix}{name}/")
    return sub


def package_check(kind: str, root: Path, settings: Mapping[str, Any] | None = None) -> None:
    """Check the package of a ``kind`` model in ``root`` (read-only; PackageError names the file).

    Every file must be of an accepted type and every torch file must load weights-only; the
    files each kind needs must be there. ``settings`` give the refinement model's ``base``.
    """
    root = Path(root)
    if kind not in PACKAGE_KINDS:
        raise PackageError(f"a {kind} model has no files")
    files = package_files(root)
    if not files:
        raise PackageError("the package is empty")
    for relative in files:
        _suffix_check(relative)
    checked = _kind_check(kind, root, settings, prefix="")
    # Whatever else is there (logs, curves, stray checkpoints) must still be safe to load.
    for relative in files:
        if relative.endswith(TORCH_SUFFIXES) and relative not in checked:
            torch_weights_load(root / relative, numpy_scalars=True, relative=relative)


def _kind_check(kind: str, root: Path, settings: Mapping[str, Any] | None, *, prefix: str) -> set[str]:
    """The checks of one kind; returns the torch files (relative to the package) it loaded."""
    if kind == "nnunet":
        return nnunet_folder_check(root, prefix=prefix)
    if kind == "cellpose":
        cellpose_file_check(root / CELLPOSE_FILE, relative=f"{prefix}{CELLPOSE_FILE}")
        return {f"{prefix}{CELLPOSE_FILE}"}
    if kind == "two_stage":
        return _kind_check("nnunet", _sub(root, "nnunet", prefix), None, prefix=f"{prefix}nnunet/") | _kind_check(
            "cellpose", _sub(root, "cellpose", prefix), None, prefix=f"{prefix}cellpose/"
        )
    if kind == "refinement":
        weights = f"{prefix}{REFINEMENT_FILE}"
        if not (root / REFINEMENT_FILE).is_file():
            raise PackageError("is missing", file=weights)
        _state_dict_check(torch_weights_load(root / REFINEMENT_FILE, relative=weights), relative=weights)
        base = (settings or {}).get("base")
        if base in PACKAGE_KINDS and base != "refinement":
            return {weights} | _kind_check(str(base), _sub(root, "base", prefix), None, prefix=f"{prefix}base/")
        return {weights}
    raise PackageError(f"a {kind} model has no files")


def package_prepare(kind: str, root: Path, settings: Mapping[str, Any] | None = None) -> None:
    """Make an uploaded or trained package ready to register, then :func:`package_check` it.

    nnU-Net checkpoints are rewritten to what inference needs (weights-only loadable; the
    optimiser state is dropped), wherever the package holds an nnU-Net folder.
    """
    root = Path(root)
    for relative in package_files(root):
        path = root / relative
        if path.suffix == ".pth" and path.name.startswith("checkpoint_") and path.parent.name.startswith("fold_"):
            nnunet_checkpoint_sanitize(path, relative=relative)
    package_check(kind, root, settings)


def package_single_file(kind: str, upload_name: str) -> str:
    """The name a single uploaded torch file takes inside a ``kind`` package."""
    if not upload_name.lower().endswith(TORCH_SUFFIXES):
        raise PackageError("upload a .zip of the model folder, or a single .pth/.pt file", file=upload_name)
    if kind == "cellpose":
        return CELLPOSE_FILE
    if kind == "refinement":
        return REFINEMENT_FILE
    raise PackageError(f"a {kind} model is a folder: upload it as a .zip archive", file=upload_name)


def folder_remove(path: Path) -> None:
    """Remove a package folder (or file) if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
