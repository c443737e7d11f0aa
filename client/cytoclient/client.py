"""The client: one :class:`Client` per server and token, its calls grouped as the API groups them.

>>> from cytoclient import Client
>>> with Client("https://cyto.example.org", token="cyt_...") as cyto:
...     project = cyto.projects.get(3)
...     cells = cyto.cells.get(image_id)

One module past the usual size because the groups share its helpers (uploads in batches, streamed
downloads, the cell item shapes) and each is small; the whole-slide groups (regions, tiles,
prompts) are in ``slides.py``, the shared base in ``_base.py``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from cytoclient import endpoints as ep
from cytoclient._base import Ref, _Api, _id
from cytoclient._transport import DEFAULT_TIMEOUT, LONG_TIMEOUT, Transport
from cytoclient.config import settings_resolve
from cytoclient.errors import (
    JobFailedError,
    ProtocolError,
    TransportError,
    UploadError,
    ValidationError,
    WaitTimeoutError,
)
from cytoclient.models import (
    JSON,
    Cell,
    CellClass,
    Cells,
    CellsDelta,
    CocoImportReport,
    ExportJob,
    GeoJsonImportReport,
    HistoryEntry,
    Image,
    Me,
    ModelVersion,
    Project,
    Registry,
    Revision,
    Rollback,
    TrainingJob,
    WorkQueue,
)
from cytoclient.progress import Progress, ProgressCallback
from cytoclient.slides import Regions, Segment, Tiles

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
BETHESDA = ("I", "II", "III", "IV", "V", "VI")


def bethesda_category(value: str | int | None) -> str | None:
    """The API's Bethesda category (``I`` ... ``VI``, or ``""`` for none) from ``IV``, ``4``,
    ``B4`` or ``Bethesda IV`` (any case). None stays None (not sent)."""
    if value is None:
        return None
    text = str(value).strip().upper().removeprefix("BETHESDA").strip().removeprefix("B").strip()
    if text == "":
        return ""
    if text.isdigit() and 1 <= int(text) <= 6:
        return BETHESDA[int(text) - 1]
    if text in BETHESDA:
        return text
    raise ValueError(f"not a Bethesda category: {value!r} (I to VI, 1 to 6 or B1 to B6)")


class Client:
    """A connection to the platform's API as one token's user.

    ``url`` is the server's address (``https://host`` or ``https://host/api/v1``); ``token`` an
    API token (``POST auth/tokens``, or the account page). Before the first call the client reads
    the server's API version from its schema: another major version raises
    :class:`~cytoclient.errors.IncompatibleServerError`, an older minor version warns
    (``check_version=False`` skips this). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        check_version: bool = True,
        max_throttle_retries: int = 3,
        verify: bool | str = True,
        http: httpx.Client | None = None,
    ) -> None:
        self.transport = Transport(
            url,
            token,
            timeout=timeout,
            check_version=check_version,
            max_throttle_retries=max_throttle_retries,
            verify=verify,
            http=http,
        )
        self.projects = Projects(self.transport)
        self.images = Images(self.transport)
        self.cells = CellsApi(self.transport)
        self.regions = Regions(self.transport)
        self.tiles = Tiles(self.transport)
        self.proposals = Proposals(self.transport)
        self.segment = Segment(self.transport)
        self.review = Review(self.transport)
        self.exports = Exports(self.transport)
        self.imports = Imports(self.transport)
        self.training = Training(self.transport)
        self.models = ModelRegistry(self.transport)

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None, **kwargs: Any) -> Client:
        """A client for ``CYTO_URL``/``CYTO_TOKEN``, or the configuration file ``cyto login`` wrote
        (see :mod:`cytoclient.config`); explicit arguments win."""
        settings = settings_resolve(url, token)
        return cls(settings.url, settings.token, **kwargs)

    @property
    def url(self) -> str:
        """The API's address (``.../api/v1/``)."""
        return self.transport.root

    def server_api_version(self) -> str:
        """The server's API version (its schema's ``info.version``)."""
        return self.transport.server_api_version()

    def check_version(self) -> None:
        """Check the server's API version now (it is checked before the first call anyway)."""
        self.transport.ensure_compatible()

    def me(self) -> Me:
        """The token's user and their project memberships."""
        return Me.from_api(self.transport.json(ep.ME))

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- projects ------------------------------------------------------------------------------


class Projects(_Api):
    """Projects and their cell classes."""

    def list(self) -> builtins.list[Project]:
        """The projects the token's user is a member of (all pages)."""
        return [Project.from_api(p) for p in self._pages(ep.PROJECT_LIST, {})]

    def get(self, project: Ref) -> Project:
        return Project.from_api(self.t.json(ep.PROJECT_GET, {"project_id": _id(project)}))

    def create(self, name: str, **fields: Any) -> Project:
        """Create a project (staff only). ``fields``: ``description``, ``experts_required``,
        ``quorum``, ``match_iou``, ``auto_presegment``, ``pipeline``, ``classes``
        (``[{"name": ..., "color"?: ..., "model_label"?: 1|2}]``)."""
        return Project.from_api(self.t.json(ep.PROJECT_CREATE, json={"name": name, **fields}))

    def classes(self, project: Ref) -> builtins.list[CellClass]:
        return [CellClass.from_api(c) for c in self.t.json(ep.CLASS_LIST, {"project_id": _id(project)})]

    def class_create(
        self, project: Ref, name: str, *, color: str | None = None, model_label: int | None = None
    ) -> CellClass:
        """Add a cell class (project admins); ``model_label`` 1 cell, 2 erythrocyte."""
        body: JSON = {"name": name}
        if color is not None:
            body["color"] = color
        if model_label is not None:
            body["model_label"] = model_label
        return CellClass.from_api(self.t.json(ep.CLASS_CREATE, {"project_id": _id(project)}, json=body))


# --- images --------------------------------------------------------------------------------


@dataclass
class UploadResult:
    """What :meth:`Images.upload` did: the images it stored, and the files it skipped because
    an identical one (same SHA-256) is already in the project, or earlier in the same list."""

    images: list[Image] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


class _CountingFile:
    """A file whose reads are reported, so an upload's progress moves with the bytes sent.
    httpx reads it in chunks from the start (``seek(0)``) each time the request is sent."""

    def __init__(self, handle: IO[bytes], report: Callable[[int], None]) -> None:
        self.handle = handle
        self.report = report
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.position += len(chunk)
        self.report(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if offset == 0 and whence == os.SEEK_SET and self.position:
            self.report(-self.position)  # sent again (a retried request): count it afresh
        result = self.handle.seek(offset, whence)
        self.position = self.handle.tell()
        return result

    def tell(self) -> int:
        return self.handle.tell()

    def fileno(self) -> int:
        return self.handle.fileno()  # httpx sizes the part from it (a Content-Length, never chunked)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_files(paths: str | Path | Iterable[str | Path], *, recursive: bool = False) -> list[Path]:
    """The image files to upload: each folder's ``.png``, ``.jpg``, ``.jpeg``, ``.tif`` and
    ``.tiff`` files (sorted by name; with ``recursive`` its sub-folders' too), and each file given."""
    items = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    found: list[Path] = []
    for item in items:
        if item.is_dir():
            pattern = item.rglob("*") if recursive else item.iterdir()
            found.extend(
                sorted(
                    p
                    for p in pattern
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                )
            )
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return found


class Images(_Api):
    """Images: upload, list, metadata, files."""

    def list(self, project: Ref, **filters: Any) -> builtins.list[Image]:
        """The project's images (all pages). ``filters``: ``status``, ``split``, ``bethesda``,
        ``presegment_status``, ``cell_class`` (a class id), ``search`` (file name)."""
        return [Image.from_api(i) for i in self._pages(ep.IMAGE_LIST, {"project_id": _id(project)}, filters)]

    def get(self, image: Ref) -> Image:
        return Image.from_api(self.t.json(ep.IMAGE_GET, {"image_id": _id(image)}))

    def update(self, image: Ref, **metadata: Any) -> Image:
        """Change an image's ``bethesda``, ``stain``, ``magnification``, ``slide_code`` or ``split``
        (a test image a snapshot used needs ``confirm_split_change=True``)."""
        if "bethesda" in metadata:
            metadata["bethesda"] = bethesda_category(metadata["bethesda"])
        return Image.from_api(self.t.json(ep.IMAGE_UPDATE, {"image_id": _id(image)}, json=metadata))

    def delete(self, image: Ref) -> None:
        self.t.call(ep.IMAGE_DELETE, {"image_id": _id(image)})

    def download(self, image: Ref, path: str | Path, *, variant: str = "original") -> Path:
        """Save the image's file (``original``, ``display`` PNG or ``thumbnail`` JPEG) to ``path``."""
        with self.t.stream(ep.IMAGE_FILE, {"image_id": _id(image)}, query={"variant": variant}) as response:
            return _save_stream(response, Path(path), None, "download")

    def upload(
        self,
        project: Ref,
        paths: str | Path | Iterable[str | Path],
        *,
        bethesda: str | int | None = None,
        stain: str | None = None,
        magnification: str | None = None,
        slide_code: str | None = None,
        split: str | None = None,
        recursive: bool = False,
        skip_existing: bool = True,
        batch_size: int = 20,
        batch_bytes: int = 48 * 1024 * 1024,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload a folder of images (or a list of files and folders) with their metadata.

        The metadata applies to every file: ``bethesda`` (``I``..``VI``; ``4`` and ``B4`` are read
        as ``IV``), ``stain``, ``magnification``, ``slide_code``, ``split`` (``train``,
        ``validation``, ``test``; left out, the server draws it from the file's content).

        The files go in batches of at most ``batch_size`` files and ``batch_bytes`` bytes (the
        server takes up to 200 files a request; each request is atomic). With ``skip_existing``
        files already in the project (same SHA-256) are skipped, so an interrupted upload is
        resumed by running it again. ``progress`` gets the bytes sent so far.

        A refused batch raises :class:`~cytoclient.errors.UploadError` naming each refused file;
        the batches before it stay stored (``UploadError.uploaded``).
        """
        if batch_size < 1 or batch_bytes < 1:
            raise ValueError("batch_size and batch_bytes must be positive")
        project_id = _id(project)
        metadata = {
            "bethesda": bethesda_category(bethesda),
            "stain": stain,
            "magnification": magnification,
            "slide_code": slide_code,
            "split": split,
        }
        files = image_files(paths, recursive=recursive)
        result = UploadResult()
        if skip_existing and files:
            present = {image.sha256 for image in self.list(project_id)}
            chosen: list[Path] = []
            for path in files:
                digest = _sha256(path)
                if digest in present:
                    result.skipped.append(path)
                else:
                    present.add(digest)  # the same content twice in the list: the server refuses the batch
                    chosen.append(path)
            files = chosen
        total = sum(p.stat().st_size for p in files)
        sent = 0

        def report(count: int, name: str = "") -> None:
            nonlocal sent
            sent += count
            if progress is not None:
                progress(Progress("upload", sent, total, "B", name))

        if progress is not None:
            progress(Progress("upload", 0, total, "B", f"{len(files)} files"))
        for batch in _batches(files, batch_size, batch_bytes):
            handles: list[IO[bytes]] = []
            try:
                parts: list[tuple[str, Any]] = []
                for path in batch:
                    handle: IO[bytes] = path.open("rb")
                    handles.append(handle)
                    counted = _CountingFile(handle, _reporter(report, path.name))
                    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                    parts.append(("files", (path.name, counted, kind)))
                base = sent
                try:
                    body = self.t.json(
                        ep.IMAGE_UPLOAD, {"project_id": project_id}, data=metadata, files=parts, timeout=LONG_TIMEOUT
                    )
                except ValidationError as exc:
                    raise _upload_error(exc, batch, result.images) from exc
                except TransportError:
                    sent = base  # the batch is not counted as sent
                    raise
            finally:
                for handle in handles:
                    handle.close()
            result.images.extend(Image.from_api(i) for i in body)
        if progress is not None:
            progress(
                Progress("upload", total, total, "B", f"{len(result.images)} uploaded, {len(result.skipped)} skipped")
            )
        return result


def _reporter(report: Callable[[int, str], None], name: str) -> Callable[[int], None]:
    return lambda count: report(count, name)


def _batches(files: Sequence[Path], size: int, max_bytes: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    batch_total = 0
    for path in files:
        file_size = path.stat().st_size
        if batch and (len(batch) >= size or batch_total + file_size > max_bytes):
            yield batch
            batch, batch_total = [], 0
        batch.append(path)
        batch_total += file_size
    if batch:
        yield batch


def _upload_error(exc: ValidationError, batch: Sequence[Path], uploaded: list[Image]) -> UploadError:
    """The server's ``files.<n>`` keys of a refused batch, as the files' paths."""
    renamed: JSON = {}
    for key, message in exc.errors.items():
        head, _, rest = key.partition(".")
        if head == "files" and rest.isdigit() and int(rest) < len(batch):
            renamed[str(batch[int(rest)])] = message
        else:
            renamed[key] = message
    payload = {**exc.payload, "errors": renamed}
    return UploadError(
        exc.detail,
        uploaded=list(uploaded),
        status_code=exc.status_code,
        payload=payload,
        method=exc.method,
        url=exc.url,
    )


# --- cells, history, proposals -------------------------------------------------------------


def _cell_write(cell: Cell | Mapping[str, Any]) -> JSON:
    if isinstance(cell, Cell):
        return cell.to_write()
    out = {k: cell[k] for k in ("id", "class_id", "polygon") if k in cell}
    if "class_id" not in out or "polygon" not in out:
        raise TypeError("a cell to save needs class_id and polygon (and id to keep an existing cell)")
    return out


def _cell_added(cell: Cell | Mapping[str, Any]) -> JSON:
    if isinstance(cell, Cell):
        return {"class_id": cell.class_id, "polygon": cell.polygon}  # a new cell: the server gives the id
    if "class_id" not in cell or "polygon" not in cell:
        raise TypeError("an added cell needs class_id and polygon")
    return {k: cell[k] for k in ("class_id", "polygon")}


def _cell_changed(cell: Cell | Mapping[str, Any]) -> JSON:
    if isinstance(cell, Cell):
        return cell.to_change()
    out = {k: cell[k] for k in ("id", "revision", "class_id", "polygon") if k in cell and cell[k] is not None}
    if "id" not in out or not ({"class_id", "polygon"} & set(out)):
        raise TypeError("a changed cell needs its id and class_id and/or polygon (and revision, as read)")
    return out


def _cell_deleted(cell: int | Cell | Mapping[str, Any]) -> int | JSON:
    if isinstance(cell, Cell):
        return {"id": cell.id, "revision": cell.revision} if cell.revision is not None else cell.id
    if isinstance(cell, Mapping):
        if "id" not in cell:
            raise TypeError("a deleted cell is an id, a Cell or {id, revision}")
        return {k: cell[k] for k in ("id", "revision") if k in cell and cell[k] is not None}
    return _id(cell)


def _bbox(box: str | Sequence[float]) -> str:
    """``x0,y0,x1,y1`` as the query sends it (the server checks it and names ``bbox``)."""
    if isinstance(box, str):
        return box
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in box)


class CellsApi(_Api):
    """The polygon store: an image's layers (whole, or a slide's viewport page by page), saves
    with revisions (the whole layer, or a delta), history and restore."""

    def get(
        self,
        image: Ref,
        *,
        layer: str = "annotation",
        model_version: int | None = None,
        bbox: str | Sequence[float] | None = None,
        page_size: int | None = None,
    ) -> Cells:
        """A layer (``annotation``, ``proposal`` or ``verified``) and the image's revision.

        With ``bbox`` (``(x0, y0, x1, y1)`` in full-resolution pixels, or ``"x0,y0,x1,y1"``) only
        the cells whose bounding box meets the box (touching edges count): a slide's viewport,
        read page by page (``page_size`` cells a request; the server's default 5000, at most
        20000) and returned whole, sorted by id. ``revision`` is then the first page's: a cell
        saved while the pages were read may be in its newer state, and a delta based on that
        revision is checked against everything saved since. A bad box is a ValidationError
        naming ``bbox``. :meth:`pages` yields the pages as they come.
        """
        if bbox is None:
            if page_size is not None:
                raise TypeError("page_size goes with bbox")
            query = {"layer": layer, "model_version": model_version}
            return Cells.from_api(self.t.json(ep.CELLS_GET, {"image_id": _id(image)}, query=query))
        pages = self.pages(image, bbox=bbox, layer=layer, model_version=model_version, page_size=page_size)
        first = next(pages)
        cells = list(first.cells)
        for page in pages:
            cells.extend(page.cells)
        raw = {"revision": first.revision, "cells": [c.raw for c in cells], "next_after": None}
        return Cells(revision=first.revision, cells=cells, raw=raw)

    def pages(
        self,
        image: Ref,
        *,
        bbox: str | Sequence[float],
        layer: str = "annotation",
        model_version: int | None = None,
        page_size: int | None = None,
        after: int | None = None,
    ) -> Iterator[Cells]:
        """The pages of a viewport read (see :meth:`get`), each a :class:`Cells` with its
        ``next_after`` (the last one's is None); ``after`` starts after that cell id."""
        path = {"image_id": _id(image)}
        while True:
            query = {
                "layer": layer,
                "model_version": model_version,
                "bbox": _bbox(bbox),
                "limit": page_size,
                "after": after,
            }
            page = Cells.from_api(self.t.json(ep.CELLS_GET, path, query=query))
            yield page
            if page.next_after is None:
                return
            if after is not None and page.next_after <= after:
                raise ProtocolError(f"{ep.CELLS_GET}: the pages do not move on (next_after {page.next_after})")
            after = page.next_after

    def patch(
        self,
        image: Ref,
        *,
        revision: int,
        added: Iterable[Cell | Mapping[str, Any]] = (),
        changed: Iterable[Cell | Mapping[str, Any]] = (),
        deleted: Iterable[int | Cell | Mapping[str, Any]] = (),
        idempotency_key: str | None = None,
    ) -> CellsDelta:
        """Save a delta of the annotation layer, based on ``revision`` (sent as ``base_revision``):
        for layers too large to send whole (slides), and for scripts that touch a few cells.

        ``added``: new cells (``{class_id, polygon}`` or :class:`Cell`; the server gives the ids).
        ``changed``: ``{id, revision?, class_id?, polygon?}`` or :class:`Cell` (its ``revision``,
        as read, is sent: the change is checked against that copy). ``deleted``: ids, cells, or
        ``{id, revision}``. One new revision, all or nothing; the answer has the added cells with
        their ids (in the order sent), the changed ones as stored, the deleted ids.

        The delta merges onto what others saved since ``revision`` unless the edits meet (a cell
        changed or deleted since your copy, or a new outline overlapping one saved since): then
        nothing is saved and :class:`~cytoclient.errors.ConflictError` carries the layer's
        ``revision``, the ``conflicts`` (item, id, reason), the server's version of the ``cells``
        concerned and the ids ``deleted`` since. A bad item is a ValidationError naming it
        (``changed.3.polygon``, ``added.0.class_id``, ``deleted.1.id``). Like :meth:`save`, it is
        sent once more with the same ``Idempotency-Key`` when the connection breaks.
        """
        body: JSON = {
            "base_revision": revision,
            "added": [_cell_added(c) for c in added],
            "changed": [_cell_changed(c) for c in changed],
            "deleted": [_cell_deleted(c) for c in deleted],
        }
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        path = {"image_id": _id(image)}
        try:
            answer = self.t.json(ep.CELLS_PATCH, path, json=body, headers=headers)
        except TransportError:
            answer = self.t.json(ep.CELLS_PATCH, path, json=body, headers=headers)
        return CellsDelta.from_api(answer)

    def save(
        self,
        image: Ref,
        cells: Iterable[Cell | Mapping[str, Any]],
        revision: int,
        *,
        idempotency_key: str | None = None,
    ) -> Cells:
        """Replace the annotation layer with ``cells`` (``{id?, class_id, polygon}`` or
        :class:`Cell`; those with an id keep it), based on ``revision``.

        When someone saved since ``revision``, nothing changes and
        :class:`~cytoclient.errors.ConflictError` carries the server's current ``revision`` and
        ``cells``. The save carries an ``Idempotency-Key``; if the connection breaks it is sent
        once more with the same key, which the server applies at most once.
        """
        body = {"revision": revision, "cells": [_cell_write(c) for c in cells]}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        path = {"image_id": _id(image)}
        try:
            answer = self.t.json(ep.CELLS_SAVE, path, json=body, headers=headers)
        except TransportError:
            answer = self.t.json(ep.CELLS_SAVE, path, json=body, headers=headers)
        return Cells.from_api(answer)

    def history(self, image: Ref) -> builtins.list[HistoryEntry]:
        """Every write of the image's annotation layer, newest first."""
        return [HistoryEntry.from_api(h) for h in self._pages(ep.HISTORY, {"image_id": _id(image)})]

    def at_revision(self, image: Ref, revision: int, *, bbox: str | Sequence[float] | None = None) -> Revision:
        """The annotation layer as it was at ``revision`` (0: empty), or with ``bbox`` only its
        cells whose bounding box meets the box; a revision that never existed is a NotFoundError."""
        path = {"image_id": _id(image), "revision": revision}
        query = {"bbox": _bbox(bbox) if bbox is not None else None}
        return Revision.from_api(self.t.json(ep.REVISION_GET, path, query=query))

    def restore(self, image: Ref, revision: int, *, current_revision: int) -> Cells:
        """Bring back the layer as it was at ``revision`` (a new write, based on ``current_revision``)."""
        return Cells.from_api(
            self.t.json(ep.RESTORE, {"image_id": _id(image), "revision": revision}, json={"revision": current_revision})
        )


class Proposals(_Api):
    """Model pre-segmentation and its proposals."""

    def presegment(self, image: Ref, *, model_version: int | None = None, region: Ref | None = None) -> JSON:
        """Queue the image's pre-segmentation (``{presegment_status, model_version}``); a tiled
        image runs tile by tile (``Image.presegment_tiles_done`` of ``presegment_tiles_total``).
        ``region``: only that region of interest of a tiled image (``regions.presegment``)."""
        body: JSON = {}
        if model_version is not None:
            body["model_version"] = model_version
        if region is not None:
            body["region"] = _id(region)
        return dict(self.t.json(ep.PRESEGMENT, {"image_id": _id(image)}, json=body))

    def list(self, image: Ref, *, model_version: int | None = None) -> builtins.list[Cell]:
        """The image's proposals (``score``, ``model_version`` of the model that made each)."""
        return CellsApi(self.t).get(image, layer="proposal", model_version=model_version).cells

    def accept(self, image: Ref, revision: int, *, ids: Iterable[int] | None = None, select_all: bool = False) -> Cells:
        """Copy proposals (``ids``, or ``select_all``) into the annotation layer, based on
        ``revision`` (a stale one: :class:`~cytoclient.errors.ConflictError`); the answer is the
        layer, and ``Cells.accepted`` the ids of the annotation cells the proposals became."""
        body = _selection(ids, select_all) | {"revision": revision}
        return Cells.from_api(self.t.json(ep.PROPOSALS_ACCEPT, {"image_id": _id(image)}, json=body))

    def reject(self, image: Ref, *, ids: Iterable[int] | None = None, select_all: bool = False) -> int:
        """Reject proposals (``ids``, or ``select_all``); returns how many."""
        body = self.t.json(ep.PROPOSALS_REJECT, {"image_id": _id(image)}, json=_selection(ids, select_all))
        return int(body.get("rejected", 0))


def _selection(ids: Iterable[int] | None, select_all: bool) -> JSON:
    if ids is None and not select_all:
        raise TypeError("give the proposal ids, or select_all=True")
    body: JSON = {"all": bool(select_all)}
    if ids is not None:
        body["ids"] = [int(i) for i in ids]
    return body


class Review(_Api):
    """The work queue and the image lifecycle."""

    def queue(self, project: Ref, *, limit: int = 5) -> WorkQueue:
        """What the token's user should do next in a project: images to ``annotate``, ``review``,
        ``adjudicate`` and (admins) ``assign``, each list with its ``count``."""
        return WorkQueue.from_api(self.t.json(ep.WORK_QUEUE, query={"project": _id(project), "limit": limit}))

    def transition(self, image: Ref, action: str) -> Image:
        """Move an image on (``start``, ``submit``, ``close_review``, ``start_adjudication``,
        ``reopen``); a refused move raises ConflictError with ``status`` and ``allowed_actions``."""
        return Image.from_api(self.t.json(ep.IMAGE_TRANSITION, {"image_id": _id(image)}, json={"action": action}))


# --- exports and imports -------------------------------------------------------------------


def _save_stream(
    response: httpx.Response, path: Path, progress: ProgressCallback | None, stage: str, total: int | None = None
) -> Path:
    """Write an answer's body to ``path`` as it arrives (a ``.part`` file renamed at the end, so
    a broken download never leaves a truncated file under the name asked for)."""
    length = response.headers.get("Content-Length")
    if total is None and length and length.isdigit() and "Content-Encoding" not in response.headers:
        total = int(length)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    written = 0
    try:
        with partial.open("wb") as handle:
            for chunk in response.iter_bytes(1 << 16):
                handle.write(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(Progress(stage, written, total, "B", path.name))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(Progress(stage, written, written, "B", str(path)))
    return path


class Exports(_Api):
    """Exports (streamed, or as background jobs) and their downloads."""

    KINDS = tuple(ep.EXPORTS)

    def download(
        self,
        project: Ref,
        path: str | Path,
        *,
        kind: str = "coco",
        layer: str | None = None,
        model_version: int | None = None,
        split: str | Iterable[str] | None = None,
        bethesda: str | Iterable[str] | None = None,
        class_ids: Iterable[int] | None = None,
        image_ids: Iterable[int] | None = None,
        run_async: bool = False,
        wait: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> Path | ExportJob:
        """Export a project to the file ``path``.

        ``kind``: ``coco`` (JSON), ``coco-zip`` (images + COCO), ``geojson`` (QuPath, a zip),
        ``nnunet``, ``cellpose`` (dataset zips). ``layer``: ``annotation``, ``verified`` or
        ``proposal`` (with ``model_version``); filters ``split``, ``bethesda``, ``class_ids``,
        ``image_ids``; ``options`` the kind's own (``segmentation="rle"``, ``gzip=True``,
        ``include_empty=True``, ``object_type``, ``dataset_id``).

        A small export streams straight into the file. A large one (or ``run_async=True``) runs
        as a job on the server: the client polls it (``progress`` gets its items done) and then
        downloads the file; with ``wait=False`` it returns the :class:`ExportJob` instead.
        """
        if kind not in ep.EXPORTS:
            raise ValueError(f"unknown export kind {kind!r}: {', '.join(ep.EXPORTS)}")
        project_id = _id(project)
        query: JSON = {
            "layer": layer,
            "model_version": model_version,
            "split": _csv(split),
            "bethesda": _csv([bethesda_category(b) or "" for b in _as_list(bethesda)]) if bethesda else None,
            "class_ids": _csv(class_ids),
            "image_ids": _csv(image_ids),
            "async": True if run_async else None,
            **options,
        }
        target = Path(path)
        with self.t.stream(ep.EXPORTS[kind], {"project_id": project_id}, query=query, timeout=LONG_TIMEOUT) as response:
            if response.status_code != 202:
                return _save_stream(response, target, progress, "export")
            response.read()
            job = ExportJob.from_api(response.json())
        if not wait:
            return job
        job = self.wait(project_id, job, poll_interval=poll_interval, timeout=timeout, progress=progress)
        return self.download_job(project_id, job, target, progress=progress)

    def coco(self, project: Ref, path: str | Path, **kwargs: Any) -> Path:
        """A COCO JSON export to ``path`` (see :meth:`download`), waiting for a job if it becomes one."""
        kwargs["wait"] = True
        result = self.download(project, path, kind="coco", **kwargs)
        if not isinstance(result, Path):  # never: wait=True downloads the job's file
            raise ProtocolError("the export did not produce a file")
        return result

    def jobs(self, project: Ref) -> builtins.list[ExportJob]:
        """The project's recent export jobs, newest first."""
        return [ExportJob.from_api(j) for j in self.t.json(ep.EXPORT_JOB_LIST, {"project_id": _id(project)})]

    def job(self, project: Ref, job: Ref) -> ExportJob:
        return ExportJob.from_api(self.t.json(ep.EXPORT_JOB_GET, {"project_id": _id(project), "job_id": _id(job)}))

    def wait(
        self,
        project: Ref,
        job: Ref,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> ExportJob:
        """Poll an export job until it is done; a failed (or expired) one raises JobFailedError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.job(project, job)
            if progress is not None:
                total = current.items_total or None
                progress(Progress("export", current.items_done, total, "items", current.status))
            if current.status == "done":
                return current
            if current.finished:
                raise JobFailedError(f"export job {current.id} {current.status}: {current.error}".rstrip(": "), current)
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"export job {current.id} still {current.status} after {timeout:g} s", current)
            time.sleep(poll_interval)

    def download_job(
        self, project: Ref, job: Ref, path: str | Path, *, progress: ProgressCallback | None = None
    ) -> Path:
        """Download a finished export job's file to ``path`` (409 while it runs, 410 once expired)."""
        size = job.size_bytes if isinstance(job, ExportJob) and job.size_bytes else None
        with self.t.stream(
            ep.EXPORT_JOB_DOWNLOAD, {"project_id": _id(project), "job_id": _id(job)}, timeout=LONG_TIMEOUT
        ) as response:
            return _save_stream(response, Path(path), progress, "download", size)


def _as_list(value: str | Iterable[Any] | None) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value)


def _csv(value: str | Iterable[Any] | None) -> str | None:
    items = _as_list(value)
    return ",".join(str(v) for v in items) if items else None


class Imports(_Api):
    """Imports (project admins): atomic, nothing is stored when anything is refused."""

    def coco(
        self,
        project: Ref,
        path: str | Path,
        *,
        images_zip: str | Path | None = None,
        dry_run: bool = False,
        unknown_categories: str = "reject",
        multipart: str | None = None,
    ) -> CocoImportReport:
        """Import a COCO JSON file's annotations into the project's annotation layer.

        Images are matched by file name; those not yet in the project come from ``images_zip``.
        ``unknown_categories``: ``reject`` (a 400 naming them) or ``create`` (new classes).
        ``multipart``: a segmentation of several polygons is ``merge``d into one cell when they
        overlap or touch (the server's default), ``split`` into one cell each, or ``refuse``d.
        ``dry_run``: check everything and report, store nothing. Errors name the image and
        annotation ids (``ValidationError.errors``); crowd annotations are listed in ``skipped``.
        """
        handles: list[IO[bytes]] = []
        try:
            coco = Path(path).open("rb")
            handles.append(coco)
            files: list[tuple[str, Any]] = [("file", (Path(path).name, coco, "application/json"))]
            if images_zip is not None:
                archive = Path(images_zip).open("rb")
                handles.append(archive)
                files.append(("images", (Path(images_zip).name, archive, "application/zip")))
            body = self.t.json(
                ep.IMPORT_COCO,
                {"project_id": _id(project)},
                data={"dry_run": dry_run, "unknown_categories": unknown_categories, "multipart": multipart},
                files=files,
                timeout=LONG_TIMEOUT,
            )
        finally:
            for handle in handles:
                handle.close()
        return CocoImportReport.from_api(body)

    def geojson(
        self,
        image: Ref,
        source: str | Path | Mapping[str, Any] | Sequence[Any],
        *,
        revision: int | None = None,
        mode: str = "append",
        class_map: Mapping[str, int | str | None] | None = None,
        default_class: int | str | None = None,
        multipart: str | None = None,
        holes: str | None = None,
        dry_run: bool = False,
    ) -> GeoJsonImportReport:
        """Import QuPath's objects (a GeoJSON FeatureCollection) into one image's annotation layer.

        ``source``: a ``.geojson`` file (sent as a file) or the FeatureCollection itself (a dict,
        or QuPath's plain list of features). ``mode``: ``append`` to the layer or ``replace`` it.
        ``class_map``: QuPath classification name -> class id or name (None skips those objects);
        ``default_class``: the class of objects whose classification is unknown or missing.
        ``multipart`` (``merge``, ``split``, ``refuse``) and ``holes`` (``refuse``, ``fill``)
        say what becomes of MultiPolygons and of polygons with holes.

        Like a cell save the import is based on ``revision``; left out, the image's current
        revision is read first (a dry run needs none). When someone saved since,
        :class:`~cytoclient.errors.ConflictError` carries the server's revision and cells and
        nothing was written. Atomic: a bad feature is a ValidationError keyed ``features.<i>``.
        """
        path = {"image_id": _id(image)}
        if revision is None and not dry_run:
            revision = CellsApi(self.t).get(image).revision
        options: JSON = {
            "revision": revision,
            "mode": mode,
            "default_class": default_class,
            "multipart": multipart,
            "holes": holes,
            "dry_run": dry_run,
        }
        if isinstance(source, str | Path):
            form = dict(options)
            if class_map is not None:
                form["class_map"] = json.dumps(dict(class_map))  # a form field: JSON text
            with Path(source).open("rb") as handle:
                files: list[tuple[str, Any]] = [("file", (Path(source).name, handle, "application/geo+json"))]
                body = self.t.json(ep.IMPORT_GEOJSON_FILE, path, data=form, files=files, timeout=LONG_TIMEOUT)
        else:
            payload: JSON = {k: v for k, v in options.items() if v is not None}
            payload["geojson"] = (
                source if isinstance(source, Mapping) else {"type": "FeatureCollection", "features": list(source)}
            )
            if class_map is not None:
                payload["class_map"] = dict(class_map)
            body = self.t.json(ep.IMPORT_GEOJSON_JSON, path, json=payload, timeout=LONG_TIMEOUT)
        return GeoJsonImportReport.from_api(body)


# --- training and the model registry -------------------------------------------------------


class Training(_Api):
    """Training jobs: start, follow, cancel; their curves and the metrics of what they made."""

    def start(
        self,
        project: Ref,
        kind: str = "two_stage",
        config: Mapping[str, Any] | None = None,
        *,
        preset: str | None = None,
        device: str | None = None,
        snapshot: int | None = None,
    ) -> TrainingJob:
        """Start a job (project admins; one live job a project, else ConflictError).

        ``kind``: ``two_stage``, ``nnunet``, ``cellpose`` or ``refinement``. ``config``: the
        hyper-parameters, checked by the server (an unknown key is a ValidationError naming its
        path, e.g. ``config.cellpose.n_epoch``); ``preset`` (``default``, ``fast``, ``tiny``) and
        ``device`` (``auto``, ``cpu``, ``cuda``) are set in it for you. ``snapshot``: train on
        that dataset snapshot (default: a new one of the verified layer).
        """
        body_config: JSON = dict(config or {})
        if preset is not None:
            body_config["preset"] = preset
        if device is not None:
            body_config["device"] = device
        body: JSON = {"kind": kind, "config": body_config}
        if snapshot is not None:
            body["snapshot"] = snapshot
        return TrainingJob.from_api(self.t.json(ep.TRAINING_START, {"project_id": _id(project)}, json=body))

    def get(self, job: Ref, *, log_after: int | None = None) -> TrainingJob:
        """A job now; with ``log_after`` its ``log`` holds only what came after that many characters."""
        return TrainingJob.from_api(self.t.json(ep.TRAINING_GET, {"job_id": _id(job)}, query={"log_after": log_after}))

    def list(self, project: Ref, *, status: str | None = None, kind: str | None = None) -> builtins.list[TrainingJob]:
        """The project's jobs, newest first (without logs and curves: :meth:`get` has them)."""
        query = {"status": status, "kind": kind}
        return [TrainingJob.from_api(j) for j in self._pages(ep.TRAINING_LIST, {"project_id": _id(project)}, query)]

    def cancel(self, job: Ref) -> JSON:
        """Ask a queued or running job to stop (``{id, status, cancel_requested}``)."""
        return dict(self.t.json(ep.TRAINING_CANCEL, {"job_id": _id(job)}))

    def wait(
        self,
        job: Ref,
        *,
        progress: ProgressCallback | None = None,
        on_update: Callable[[TrainingJob], None] | None = None,
        on_log: Callable[[str], None] | None = None,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> TrainingJob:
        """Poll a job until it ends; returns it with its whole log and curves.

        ``progress`` gets the overall fraction (:attr:`TrainingJob.fraction`) and a line saying
        where the job is; ``on_update`` every polled state; ``on_log`` each new piece of the log.
        A failed or cancelled job raises JobFailedError (``raise_on_failure=False`` returns it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        log_length = 0
        while True:
            current = self.get(job, log_after=log_length)
            if on_log is not None and current.log:
                on_log(current.log)
            log_length = current.log_length if current.log_length is not None else log_length + len(current.log)
            if progress is not None:
                fraction = current.fraction
                progress(
                    Progress(
                        "training", fraction or 0.0, 1.0 if fraction is not None else None, "%", current.describe()
                    )
                )
            if on_update is not None:
                on_update(current)
            if current.finished:
                final = self.get(job)
                if raise_on_failure and final.status != "succeeded":
                    last = final.error.strip().splitlines()[-1] if final.error.strip() else ""
                    raise JobFailedError(
                        f"training job {final.id} {final.status}" + (f": {last}" if last else ""), final
                    )
                return final
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"training job {current.id} still {current.status} after {timeout:g} s", current)
            time.sleep(poll_interval)

    def curves(self, job: Ref) -> dict[str, builtins.list[JSON]]:
        """Each stage's per-epoch points (``{"cellpose": [{"epoch": 0, "train_loss": ...}]}``)."""
        current = job if isinstance(job, TrainingJob) and job.curves else self.get(job)
        return {stage: list(points) for stage, points in current.curves.items()}

    def metrics(self, job: Ref) -> dict[int, JSON]:
        """The metrics of each model version the job made on the frozen test images (its
        evaluation's ``overall``: ``f1_50``, ``dice``, ...; empty when not evaluated), by version
        id. :meth:`ModelRegistry.get` has the rest of each version's evaluation."""
        current = job if isinstance(job, TrainingJob) else self.get(job)
        registry = ModelRegistry(self.t)
        return {version_id: registry.get(version_id).overall for version_id in current.model_versions}


class ModelRegistry(_Api):
    """The model registry: versions with metrics side by side, promote, roll back."""

    def list(self, project: Ref, *, kind: str | None = None, snapshot: int | None = None) -> Registry:
        """The project's versions with their metrics on one snapshot's test images, and the
        version that pre-segments now (``presegmenter``)."""
        return Registry.from_api(
            self.t.json(ep.REGISTRY, {"project_id": _id(project)}, query={"kind": kind, "snapshot": snapshot})
        )

    def get(self, version: Ref) -> ModelVersion:
        return ModelVersion.from_api(self.t.json(ep.MODEL_GET, {"version_id": _id(version)}))

    def promote(self, version: Ref, *, reason: str = "") -> ModelVersion:
        """Make a version its kind's active one and the project's pre-segmenter (admins)."""
        return ModelVersion.from_api(
            self.t.json(ep.MODEL_PROMOTE, {"version_id": _id(version)}, json={"reason": reason})
        )

    def rollback(self, project: Ref, kind: str) -> Rollback:
        """Go back to the version the active one of ``kind`` replaced (admins)."""
        return Rollback.from_api(self.t.json(ep.MODEL_ROLLBACK, {"project_id": _id(project)}, json={"kind": kind}))
