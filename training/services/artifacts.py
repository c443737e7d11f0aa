"""Model files as storage objects, and each host's verified local cache of them.

A model version's files are objects of the default storage under ``models/<project>/<key>/``
(``ModelVersion.artifact_prefix``), with each file's sha256 and size recorded in
``ModelVersion.artifacts``. The storage is local disk in the embedded setup and an
S3-compatible bucket in production; the code is the same.

Loaders (nnU-Net, Cellpose) read folders, so a process that runs a model first asks
:func:`artifacts_local` for a local copy: it comes from this host's cache, a folder per version
named by the sha256 of the version's manifest (every file's path and sha256). A missing entry is
downloaded into a temporary folder while each file is hashed, and only a complete copy whose
every hash matches is renamed into place; a stored object that was changed since it was
registered is refused and never reaches a loader (nnU-Net unpickles its checkpoints). Entries
are evicted, least recently used first, once the cache exceeds ``MODEL_CACHE_MAX_BYTES``.

Writers (training, uploads) build a version in local scratch, then :func:`artifacts_upload` it,
then register it: the registry row only ever names objects that exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from core.errors import ConflictError
from cytoseg.backends.packages import PACKAGE_KINDS, package_files
from training.models import ModelVersion

logger = logging.getLogger(__name__)

ROOT = "models"
_MARKER = ".manifest.json"  # written last into a complete cache entry
# An entry used this recently is never evicted: another process may be about to load it.
IN_USE_SECONDS = 600.0
_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def artifacts_inspect(root: Path) -> list[dict[str, Any]]:
    """``[{path, sha256, size}]`` of every file under the local folder ``root`` (paths relative
    to it, sorted; a file: its own name). Links and special files are refused."""
    root = Path(root)
    out = []
    for relative in package_files(root):
        path = root if root.is_file() else root / relative
        out.append({"path": relative, "sha256": file_sha256(path), "size": path.stat().st_size})
    return out


def artifacts_prefix_new(*, project_id: int) -> str:
    """A fresh storage prefix for one version's files."""
    return f"{ROOT}/{project_id}/{uuid.uuid4().hex}"


def artifacts_upload(*, folder: Path, prefix: str) -> list[dict[str, Any]]:
    """Upload every file of the local ``folder`` (a model package, checked) under ``prefix`` of
    the default storage; returns their manifest. On failure the objects written so far are
    deleted, so that nothing half written stays behind."""
    folder = Path(folder)
    entries = artifacts_inspect(folder)
    written: list[str] = []
    try:
        for entry in entries:
            name = f"{prefix}/{entry['path']}"
            source = folder if folder.is_file() else folder / entry["path"]
            with source.open("rb") as handle:
                stored = default_storage.save(name, File(handle, name=PurePosixPath(entry["path"]).name))
            written.append(stored)
            if stored != name:  # a fresh prefix holds nothing; another name would break the manifest
                raise ConflictError(f"Storage object {name} already existed; the model was not stored.")
    except BaseException:
        artifacts_delete(names=written)
        raise
    return entries


def artifacts_delete(*, names: list[str]) -> None:
    """Delete storage objects, ignoring ones already gone."""
    for name in names:
        with contextlib.suppress(Exception):
            default_storage.delete(name)


def _listing(prefix: str) -> set[str]:
    """Every object name under ``prefix`` (relative to it)."""
    found: set[str] = set()
    pending = [""]
    while pending:
        sub = pending.pop()
        try:
            dirs, files = default_storage.listdir(f"{prefix}/{sub}".rstrip("/"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.update(f"{sub}{name}" for name in files)
        pending.extend(f"{sub}{name}/" for name in dirs)
    return found


def artifacts_check(version: ModelVersion) -> None:
    """Raise ConflictError unless ``version``'s objects are exactly the recorded ones, each of
    its recorded size (a cheap check, for promotion; :func:`artifacts_local` checks every
    sha256 before anything is loaded)."""
    _require_manifest(version)
    present = _listing(version.artifact_prefix)
    recorded = {entry["path"] for entry in version.artifacts}
    if present != recorded:
        changed = sorted(present ^ recorded)
        raise ConflictError(f"The files of {version} changed since it was registered: {', '.join(changed[:5])}.")
    for entry in version.artifacts:
        size = default_storage.size(f"{version.artifact_prefix}/{entry['path']}")
        if size != entry["size"]:
            raise ConflictError(
                f"Artifact {entry['path']} of {version} does not match its recorded sha256 (its size changed)."
            )


def _require_manifest(version: ModelVersion) -> None:
    if not version.artifact_prefix or not version.artifacts:
        raise ConflictError(f"{version} has no recorded model files; upload the model again.")
    prefix = PurePosixPath(version.artifact_prefix)
    if prefix.parts[:1] != (ROOT,) or ".." in prefix.parts or prefix.is_absolute():
        raise ConflictError(f"The files of {version} lie outside the platform's model storage; upload it again.")
    for entry in version.artifacts:
        path = PurePosixPath(str(entry.get("path", "")))
        if not path.parts or path.is_absolute() or ".." in path.parts:
            raise ConflictError(f"{version} records an invalid file name {entry.get('path')!r}.")


def manifest_key(artifacts: list[dict[str, Any]]) -> str:
    """The cache key of a version: the sha256 of its files' paths and hashes."""
    canonical = json.dumps(sorted((str(a["path"]), str(a["sha256"])) for a in artifacts), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def artifacts_local(version: ModelVersion) -> Path:
    """A local folder holding exactly ``version``'s files, every one verified against its
    recorded sha256: from this host's cache, fetched from storage on a miss.

    Raises ConflictError (nothing is loaded) when a stored object is missing or was changed.
    A cached copy whose files lost their recorded sizes is fetched again.
    """
    _require_manifest(version)
    cache = Path(settings.MODEL_CACHE_DIR)
    cache.mkdir(parents=True, exist_ok=True)
    key = manifest_key(version.artifacts)
    final = cache / key
    if _entry_complete(final, version.artifacts):
        os.utime(final / _MARKER)
        return final
    tmp = cache / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        fetched = 0
        for entry in version.artifacts:
            target = tmp / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = _download(f"{version.artifact_prefix}/{entry['path']}", target, version=version, entry=entry)
            if digest != entry["sha256"]:
                raise ConflictError(
                    f"Artifact {entry['path']} of {version} does not match its recorded sha256: "
                    "the stored object was changed since it was registered, so it is not loaded."
                )
            fetched += entry["size"]
        (tmp / _MARKER).write_text(json.dumps({"version": version.pk, "artifacts": version.artifacts}))
        with _cache_lock(cache):
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)  # a damaged entry (a complete one returned above)
            os.replace(tmp, final)
            _evict(cache, keep=key)
        logger.info(
            "model cache: fetched %s (%d files, %.1f MB) into %s", version, len(version.artifacts), fetched / 1e6, final
        )
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def artifacts_for(version: ModelVersion) -> Path | None:
    """What a loader gets for ``version``: the verified local folder of its files
    (:func:`artifacts_local`), or None for kinds that have no files (the baselines)."""
    if version.kind not in PACKAGE_KINDS:
        return None
    return artifacts_local(version)


def _download(name: str, target: Path, *, version: ModelVersion, entry: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    size = 0
    try:
        source = default_storage.open(name, "rb")
    except FileNotFoundError as exc:
        raise ConflictError(f"Artifact {entry['path']} of {version} is missing from storage; upload it again.") from exc
    with source, target.open("xb") as out:
        while block := source.read(_BLOCK):
            size += len(block)
            if size > int(entry["size"]):
                break  # larger than recorded: changed; no need to read the rest
            digest.update(block)
            out.write(block)
    return digest.hexdigest() if size == int(entry["size"]) else ""


def _entry_complete(folder: Path, artifacts: list[dict[str, Any]]) -> bool:
    if not (folder / _MARKER).is_file():
        return False
    for entry in artifacts:
        path = folder / entry["path"]
        if not path.is_file() or path.stat().st_size != int(entry["size"]):
            return False
    return True


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """One process at a time renames into or evicts from the cache (prefork pools share it)."""
    with (cache / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _folder_size(folder: Path) -> int:
    """The model files' bytes (the small manifest is not counted)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != _MARKER)


def _evict(cache: Path, *, keep: str) -> list[str]:
    """Remove least recently used entries until the cache fits ``MODEL_CACHE_MAX_BYTES``
    (never ``keep``, nor an entry used in the last few minutes)."""
    entries = []
    for folder in cache.iterdir():
        marker = folder / _MARKER
        if folder.name.startswith(".") or not marker.is_file():
            continue
        entries.append((marker.stat().st_mtime, folder.name, _folder_size(folder)))
    total = sum(size for _, _, size in entries)
    removed = []
    now = time.time()
    for used, name, size in sorted(entries):
        if total <= int(settings.MODEL_CACHE_MAX_BYTES):
            break
        if name == keep or now - used < IN_USE_SECONDS:
            continue
        shutil.rmtree(cache / name, ignore_errors=True)
        total -= size
        removed.append(name)
    if removed:
        logger.info("model cache: evicted %d entries, %.1f MB left", len(removed), total / 1e6)
    return removed


def artifacts_cache_evict() -> list[str]:
    """Evict from this host's model cache down to its size limit (returns the removed keys)."""
    cache = Path(settings.MODEL_CACHE_DIR)
    if not cache.is_dir():
        return []
    with _cache_lock(cache):
        return _evict(cache, keep="")
