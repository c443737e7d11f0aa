"""Writes: every change to projects, memberships, tokens, images and cells goes through here."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder
from shapely.geometry import Polygon

from annotations.errors import ConflictError, RateLimitedError, ServiceValidationError
from annotations.geometry import CleanPolygon, GeometryError, polygon_clean
from annotations.imaging import DecodedImage, ImageRejected, encode_png, encode_thumbnail, image_decode
from annotations.models import (
    AnnotationRevision,
    ApiToken,
    AuditEvent,
    Bethesda,
    Cell,
    CellClass,
    CellSource,
    IdempotencyRecord,
    Image,
    Layer,
    Project,
    ProjectMembership,
    Role,
    Split,
)
from annotations.selectors import CELL_FIELDS

DEFAULT_CLASSES: tuple[tuple[str, str, int], ...] = (
    ("thyroid cell", "#7b3fe4", 1),
    ("erythrocyte", "#e4572e", 2),
)
# Paper A's split of 272 images: 120 train, 30 validation, 122 test.
DEFAULT_SPLIT_RATIOS = {"train": 120 / 272, "validation": 30 / 272, "test": 122 / 272}


def audit_record(
    *,
    project: Project | None,
    actor: User | None,
    action: str,
    image: Image | None = None,
    target: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """Append one entry to the audit log (who, when, what, before/after)."""
    return AuditEvent.objects.create(
        project=project,
        image=image,
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target=target,
        before=before,
        after=after,
    )


# --- projects, memberships, classes -------------------------------------------------------


def _validate_project_fields(data: dict[str, Any]) -> None:
    errors: dict[str, str] = {}
    if "name" in data and not str(data["name"]).strip():
        errors["name"] = "must not be empty"
    k = data.get("experts_required")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10):
        errors["experts_required"] = "must be an integer from 1 to 10"
    quorum = data.get("quorum")
    if quorum is not None and (not isinstance(quorum, int) or isinstance(quorum, bool) or quorum < 1):
        errors["quorum"] = "must be a positive integer or null (all experts)"
    elif quorum is not None and k is not None and quorum > k:
        errors["quorum"] = f"must not exceed experts_required ({k})"
    iou = data.get("match_iou")
    if iou is not None and (not isinstance(iou, (int, float)) or isinstance(iou, bool) or not 0 < iou <= 1):
        errors["match_iou"] = "must be a number in (0, 1]"
    if "pipeline" in data and not isinstance(data["pipeline"], dict):
        errors["pipeline"] = "must be an object"
    if errors:
        raise ServiceValidationError("Invalid project settings.", errors)


def project_create(
    *,
    name: str,
    created_by: User,
    description: str = "",
    experts_required: int = 2,
    quorum: int | None = None,
    match_iou: float = 0.5,
    auto_presegment: bool = True,
    pipeline: dict[str, Any] | None = None,
) -> Project:
    """Create a project with the default cell classes; its creator becomes its admin."""
    _validate_project_fields(
        {"name": name, "experts_required": experts_required, "quorum": quorum, "match_iou": match_iou}
    )
    with transaction.atomic():
        project = Project.objects.create(
            name=name.strip(),
            description=description,
            experts_required=experts_required,
            quorum=quorum,
            match_iou=match_iou,
            auto_presegment=auto_presegment,
            pipeline=pipeline or {},
            created_by=created_by,
        )
        CellClass.objects.bulk_create(
            CellClass(project=project, name=n, color=c, model_label=label, order=i)
            for i, (n, c, label) in enumerate(DEFAULT_CLASSES)
        )
        ProjectMembership.objects.create(project=project, user=created_by, role=Role.ADMIN)
    return project


PROJECT_EDITABLE = ("name", "description", "experts_required", "quorum", "match_iou", "auto_presegment", "pipeline")


def project_update(*, project: Project, data: dict[str, Any]) -> Project:
    """Update project settings (only the editable fields; unknown fields are rejected)."""
    unknown = set(data) - set(PROJECT_EDITABLE)
    if unknown:
        raise ServiceValidationError(
            "Unknown or read-only fields.", {f: "cannot be changed here" for f in sorted(unknown)}
        )
    merged = {f: getattr(project, f) for f in PROJECT_EDITABLE} | data
    _validate_project_fields(merged)
    for field, value in data.items():
        setattr(project, field, value.strip() if field == "name" else value)
    project.save(update_fields=[*data.keys(), "updated_at"])
    return project


def membership_set(*, project: Project, user: User, role: str) -> ProjectMembership:
    """Add ``user`` to ``project`` with ``role``, or change the role of an existing member."""
    if role not in Role.values:
        raise ServiceValidationError("Invalid role.", {"role": f"must be one of {', '.join(Role.values)}"})
    membership, _ = ProjectMembership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def membership_remove(*, membership: ProjectMembership) -> None:
    project = membership.project
    if (
        membership.role == Role.ADMIN
        and not project.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk).exists()
    ):
        raise ConflictError("A project must keep at least one admin.")
    membership.delete()


_COLOR_HEX = set("0123456789abcdefABCDEF")


def _validate_class(data: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    if "name" in data and not str(data.get("name") or "").strip():
        errors["name"] = "must not be empty"
    color = data.get("color")
    if color is not None and not (
        isinstance(color, str) and len(color) == 7 and color[0] == "#" and set(color[1:]) <= _COLOR_HEX
    ):
        errors["color"] = "must be a colour like #aabbcc"
    label = data.get("model_label")
    if label is not None and label not in (1, 2):
        errors["model_label"] = "must be 1 (cell) or 2 (erythrocyte)"
    return errors


def cell_class_create(*, project: Project, name: str, color: str = "#1f77b4", model_label: int = 1) -> CellClass:
    errors = _validate_class({"name": name, "color": color, "model_label": model_label})
    if name.strip() and project.classes.filter(name=name.strip()).exists():
        errors["name"] = f"a class named {name.strip()!r} already exists"
    if errors:
        raise ServiceValidationError("Invalid cell class.", errors)
    order = project.classes.count()
    return CellClass.objects.create(
        project=project, name=name.strip(), color=color, model_label=model_label, order=order
    )


def cell_class_update(*, cell_class: CellClass, data: dict[str, Any]) -> CellClass:
    allowed = {"name", "color", "model_label", "order"}
    errors = {f: "cannot be changed" for f in set(data) - allowed} | _validate_class(data)
    name = data.get("name")
    if name and cell_class.project.classes.filter(name=name.strip()).exclude(pk=cell_class.pk).exists():
        errors["name"] = f"a class named {name.strip()!r} already exists"
    if errors:
        raise ServiceValidationError("Invalid cell class.", errors)
    for field, value in data.items():
        setattr(cell_class, field, value.strip() if field == "name" else value)
    cell_class.save()
    return cell_class


def cell_class_delete(*, cell_class: CellClass) -> None:
    if cell_class.cells.exists():
        raise ConflictError(f"Class {cell_class.name!r} is used by cells; reassign them first.")
    cell_class.delete()


# --- authentication ------------------------------------------------------------------------


def _token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(
    *, user: User, name: str, project: Project | None = None, expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Create a token; returns it with its secret, which is never stored and shown only once."""
    errors: dict[str, str] = {}
    if not name.strip():
        errors["name"] = "must not be empty"
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        errors["expires_in_days"] = "must be from 1 to 3650"
    if errors:
        raise ServiceValidationError("Invalid token.", errors)
    raw = "cyt_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        project=project,
        name=name.strip(),
        prefix=raw[:12],
        key_hash=_token_hash(raw),
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    return token, raw


def api_token_revoke(*, token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The live token for ``raw``, or None. Records last use at most once a minute."""
    token = ApiToken.objects.select_related("user").filter(key_hash=_token_hash(raw)).first()
    now = timezone.now()
    if token is None or token.revoked_at is not None or not token.user.is_active:
        return None
    if token.expires_at is not None and token.expires_at <= now:
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def _login_keys(username: str, ip: str) -> tuple[str, str]:
    user_key = hashlib.sha256(username.lower().encode()).hexdigest()[:32]
    return f"login-fail:user:{user_key}", f"login-fail:ip:{ip}"


def user_login_check(*, username: str, password: str, ip: str) -> User:
    """Authenticate, rate limited per user name and per client address.

    After LOGIN_MAX_FAILURES failures (per name, or 4x that per address) further attempts are
    refused for LOGIN_LOCKOUT_SECONDS, even with the right password.
    """
    limit, lockout = settings.LOGIN_MAX_FAILURES, settings.LOGIN_LOCKOUT_SECONDS
    user_key, ip_key = _login_keys(username, ip)
    if cache.get(user_key, 0) >= limit or cache.get(ip_key, 0) >= 4 * limit:
        raise RateLimitedError("Too many failed logins; try again later.", retry_after=lockout)
    user = cast(User | None, authenticate(username=username, password=password))
    if user is None:
        for key in (user_key, ip_key):
            if not cache.add(key, 1, timeout=lockout):
                try:
                    cache.incr(key)
                except ValueError:
                    cache.set(key, 1, timeout=lockout)
        raise ServiceValidationError("Wrong user name or password.", {"password": "wrong user name or password"})
    cache.delete(user_key)
    return user


# --- images --------------------------------------------------------------------------------


class UploadLike(Protocol):
    @property
    def name(self) -> str | None: ...

    @property
    def size(self) -> int | None: ...

    def read(self, size: int = -1) -> bytes: ...


METADATA_FIELDS = ("bethesda", "stain", "magnification", "slide_code", "split")


def _validate_metadata(data: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    if data.get("bethesda") and data["bethesda"] not in Bethesda.values:
        errors["bethesda"] = f"must be one of {', '.join(Bethesda.values)}"
    if data.get("split") and data["split"] not in Split.values:
        errors["split"] = f"must be one of {', '.join(Split.values)}"
    for field, limit in (("stain", 64), ("magnification", 16), ("slide_code", 64)):
        if field in data and not isinstance(data[field], str):
            errors[field] = "must be text"
        elif len(data.get(field) or "") > limit:
            errors[field] = f"must be at most {limit} characters"
    return errors


def split_for(*, project: Project, sha256: str) -> str:
    """Deterministic split from the content hash and the project's ratios."""
    ratios = project.pipeline.get("split_ratios") or DEFAULT_SPLIT_RATIOS
    position = int(sha256[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for split in ("train", "validation", "test"):
        cumulative += float(ratios.get(split, 0))
        if position <= cumulative:
            return split
    return "test"


@dataclass
class _Prepared:
    name: str
    data: bytes
    decoded: DecodedImage


def image_upload_many(
    *, project: Project, files: Sequence[UploadLike], metadata: dict[str, Any], uploaded_by: User
) -> list[Image]:
    """Validate every file by decoding it, then store all of them or none.

    Errors are keyed ``files.<index>`` and name the file; duplicates (same SHA-256 in the
    project, or twice in one upload) are rejected.
    """
    if not files:
        raise ServiceValidationError("No files uploaded.", {"files": "at least one file is required"})
    if len(files) > settings.IMAGE_MAX_FILES_PER_UPLOAD:
        raise ServiceValidationError(
            "Too many files.", {"files": f"at most {settings.IMAGE_MAX_FILES_PER_UPLOAD} per upload"}
        )
    metadata = {k: v for k, v in metadata.items() if k in METADATA_FIELDS}
    errors: dict[str, str] = dict(_validate_metadata(metadata))
    prepared: list[_Prepared] = []
    seen: dict[str, str] = {}
    existing = dict(project.images.values_list("sha256", "file_name"))
    for index, upload in enumerate(files):
        name = (upload.name or f"upload-{index}").rsplit("/", 1)[-1][:255]
        if upload.size is not None and upload.size > settings.IMAGE_MAX_UPLOAD_BYTES:
            errors[f"files.{index}"] = (
                f"{name}: {upload.size} bytes exceeds the limit of {settings.IMAGE_MAX_UPLOAD_BYTES}"
            )
            continue
        data = upload.read(settings.IMAGE_MAX_UPLOAD_BYTES + 1)
        if len(data) > settings.IMAGE_MAX_UPLOAD_BYTES:
            errors[f"files.{index}"] = f"{name}: exceeds the size limit of {settings.IMAGE_MAX_UPLOAD_BYTES} bytes"
            continue
        try:
            decoded = image_decode(data, max_pixels=settings.IMAGE_MAX_PIXELS)
        except ImageRejected as exc:
            errors[f"files.{index}"] = f"{name}: {exc}"
            continue
        if decoded.sha256 in existing:
            errors[f"files.{index}"] = f"{name}: duplicate of {existing[decoded.sha256]!r} already in this project"
            continue
        if decoded.sha256 in seen:
            errors[f"files.{index}"] = f"{name}: duplicate of {seen[decoded.sha256]!r} in this upload"
            continue
        seen[decoded.sha256] = name
        prepared.append(_Prepared(name=name, data=data, decoded=decoded))
    if errors:
        raise ServiceValidationError("Upload rejected; nothing was stored.", errors)

    written: list[str] = []
    try:
        with transaction.atomic():
            images = [
                _image_store(project=project, item=p, metadata=metadata, user=uploaded_by, written=written)
                for p in prepared
            ]
    except IntegrityError as exc:
        _delete_files(written)
        raise ServiceValidationError(
            "Upload rejected; nothing was stored.", {"files": "an identical image was stored concurrently"}
        ) from exc
    except BaseException:
        _delete_files(written)
        raise
    return images


def _delete_files(paths: list[str]) -> None:
    for path in paths:
        default_storage.delete(path)


def _image_store(
    *, project: Project, item: _Prepared, metadata: dict[str, Any], user: User, written: list[str]
) -> Image:
    decoded = item.decoded
    folder = f"projects/{project.pk}/images/{decoded.sha256[:2]}/{decoded.sha256}"
    extension = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}.get(decoded.original_format, "bin")

    def save(name: str, content: bytes) -> str:
        path = default_storage.save(f"{folder}/{name}", ContentFile(content))
        written.append(path)
        return path

    original = save(f"original.{extension}", item.data)
    display = save("display.png", encode_png(decoded.rgb))
    thumbnail = save("thumbnail.jpg", encode_thumbnail(decoded.rgb))
    return Image.objects.create(
        project=project,
        file_name=item.name,
        sha256=decoded.sha256,
        original=original,
        display=display,
        thumbnail=thumbnail,
        original_format=decoded.original_format,
        original_mode=decoded.original_mode,
        bit_depth=decoded.bit_depth,
        size_bytes=len(item.data),
        width=decoded.width,
        height=decoded.height,
        bethesda=metadata.get("bethesda") or "",
        stain=str(metadata["stain"]) if metadata.get("stain") is not None else "Diff-Quik",
        magnification=metadata.get("magnification") or "",
        slide_code=metadata.get("slide_code") or "",
        split=metadata.get("split") or split_for(project=project, sha256=decoded.sha256),
        uploaded_by=user,
    )


def image_update(*, image: Image, data: dict[str, Any], user: User, can_manage: bool) -> Image:
    """Update an image's metadata. The data split is fixed once assigned: only a project admin
    may change it, and only by also sending ``confirm_split_change: true`` (recorded in history)."""
    confirm = bool(data.pop("confirm_split_change", False))
    unknown = set(data) - set(METADATA_FIELDS)
    errors: dict[str, str] = {f: "cannot be changed" for f in sorted(unknown)}
    errors |= _validate_metadata(data)
    if errors:
        raise ServiceValidationError("Invalid image metadata.", errors)
    new_split = data.get("split")
    split_changed = new_split is not None and new_split != image.split
    if split_changed:
        if not can_manage:
            raise ServiceValidationError("The split is fixed.", {"split": "only a project admin may change it"})
        if not confirm:
            raise ServiceValidationError(
                "The split is fixed.",
                {"split": "changing an assigned split needs confirm_split_change: true"},
            )
    with transaction.atomic():
        old_split = image.split
        for field, value in data.items():
            setattr(image, field, value or "" if field != "split" else value or image.split)
        image.save()
        if split_changed:
            audit_record(
                project=image.project,
                image=image,
                actor=user,
                action="image.split_change",
                before={"split": old_split},
                after={"split": image.split},
            )
    return image


def image_delete(*, image: Image) -> None:
    paths = [f.name for f in (image.original, image.display, image.thumbnail) if f.name]
    image.delete()
    transaction.on_commit(lambda: _delete_files(paths))


# --- the polygon store ---------------------------------------------------------------------


def _cell_payload_errors(
    cells: object, *, image: Image, classes: dict[int, CellClass]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not isinstance(cells, list):
        return [], {"cells": "must be a list of cells"}
    if len(cells) > settings.CELL_MAX_PER_IMAGE:
        return [], {"cells": f"at most {settings.CELL_MAX_PER_IMAGE} cells per image"}
    clean: list[dict[str, Any]] = []
    errors: dict[str, Any] = {}
    seen_ids: set[int] = set()
    for index, raw in enumerate(cells):
        key = f"cells.{index}"
        if not isinstance(raw, dict):
            errors[key] = "must be an object with class_id and polygon"
            continue
        cell_id = raw.get("id")
        if cell_id is not None:
            if not isinstance(cell_id, int) or isinstance(cell_id, bool):
                errors[key] = "id must be an integer"
                continue
            if cell_id in seen_ids:
                errors[key] = f"id {cell_id} appears twice"
                continue
            seen_ids.add(cell_id)
        class_id = raw.get("class_id")
        if class_id not in classes:
            errors[key] = f"class_id {class_id!r} is not a class of this project"
            continue
        try:
            polygon = polygon_clean(
                raw.get("polygon"),
                width=image.width,
                height=image.height,
                max_vertices=settings.CELL_MAX_VERTICES,
            )
        except GeometryError as exc:
            errors[key] = str(exc)
            continue
        clean.append({"id": cell_id, "class_id": class_id, "polygon": polygon, "extra": raw})
    return clean, errors


def _snapshot(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": r["id"],
            "class_id": r["cell_class_id"],
            "polygon": r["polygon"],
            "source": r["source"],
            "score": r["score"],
            "model_version_id": r["model_version_id"],
            "author_id": r["author_id"],
            "provenance": r["provenance"],
        }
        for r in rows
    ]


def _conflict(image: Image) -> ConflictError:
    rows = list(image.cells.filter(layer=Layer.ANNOTATION).order_by("id").values(*CELL_FIELDS))
    return ConflictError(
        f"The annotations changed on the server (now revision {image.revision}); reload or resolve the conflict.",
        {"revision": image.revision, "cells": rows},
    )


@dataclass
class LayerWrite:
    revision: int
    cells: list[dict[str, Any]]  # the written cells, in request order
    layer: list[dict[str, Any]]  # the whole layer after the write, by id
    summary: dict[str, Any]


def _apply_layer(
    *,
    image: Image,
    user: User | None,
    base_revision: int,
    desired: list[dict[str, Any]],
    action: str,
    keep_missing: bool = False,
) -> LayerWrite:
    """Make the annotation layer equal to ``desired`` (or add to it when ``keep_missing``).

    Each desired item: ``id`` (optional, kept if it is a cell of this layer, else a new cell is
    made), ``class_id``, ``polygon`` (a CleanPolygon) and optional ``source``, ``score``,
    ``model_version_id``, ``provenance``, ``restore_id`` (an id to re-create a deleted cell with).
    Runs under a row lock on the image; a stale ``base_revision`` raises ConflictError.
    """
    locked = Image.objects.select_for_update().get(pk=image.pk)
    if locked.revision != base_revision:
        raise _conflict(locked)
    now = timezone.now()
    existing = {c.pk: c for c in Cell.objects.filter(image_id=image.pk, layer=Layer.ANNOTATION)}
    kept: set[int] = set()
    order: list[Cell] = []
    to_create: list[Cell] = []
    to_update: list[Cell] = []
    for item in desired:
        polygon = item["polygon"]
        cell = existing.get(item["id"]) if item.get("id") is not None else None
        if cell is not None and cell.pk not in kept:
            kept.add(cell.pk)
            if cell.polygon != polygon.points or cell.cell_class_id != item["class_id"]:
                cell.polygon = polygon.points
                cell.cell_class_id = item["class_id"]
                cell.bbox_x, cell.bbox_y, cell.bbox_w, cell.bbox_h = polygon.bbox
                cell.area = polygon.area
                cell.updated_at = now
                to_update.append(cell)
        else:
            cell = Cell(
                pk=item.get("restore_id"),
                image_id=image.pk,
                layer=Layer.ANNOTATION,
                cell_class_id=item["class_id"],
                polygon=polygon.points,
                bbox_x=polygon.bbox[0],
                bbox_y=polygon.bbox[1],
                bbox_w=polygon.bbox[2],
                bbox_h=polygon.bbox[3],
                area=polygon.area,
                score=item.get("score"),
                source=item.get("source", CellSource.MANUAL),
                model_version_id=item.get("model_version_id"),
                provenance=item.get("provenance") or {},
                author_id=item.get("author_id", user.pk if user else None),
                created_at=now,
                updated_at=now,
            )
            to_create.append(cell)
        order.append(cell)
    deleted = [] if keep_missing else [pk for pk in existing if pk not in kept]
    if deleted:
        Cell.objects.filter(pk__in=deleted).delete()
    if to_update:
        Cell.objects.bulk_update(
            to_update, ["polygon", "cell_class_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "area", "updated_at"]
        )
    if to_create:
        Cell.objects.bulk_create(to_create)
    summary = {"added": len(to_create), "changed": len(to_update), "deleted": len(deleted)}
    revision = base_revision + 1
    final = [c for c in existing.values() if c.pk not in deleted and c.pk not in kept] + order
    final.sort(key=lambda c: c.pk)
    rows = [{f: getattr(c, f) for f in CELL_FIELDS} for c in final]
    Image.objects.filter(pk=image.pk).update(revision=revision, updated_at=now)
    AnnotationRevision.objects.create(
        image_id=image.pk,
        revision=revision,
        author=user,
        action=action,
        summary=summary,
        snapshot=_snapshot(rows),
    )
    image.revision = revision
    by_pk = {r["id"]: r for r in rows}
    return LayerWrite(revision=revision, cells=[by_pk[c.pk] for c in order], layer=rows, summary=summary)


def cells_replace(*, image: Image, user: User, base_revision: int, cells: object) -> LayerWrite:
    """Replace the whole annotation layer of ``image`` in one transaction.

    Cells that carry the id of a cell of this layer keep it; other cells are created; cells not
    sent are deleted. Validation errors are keyed ``cells.<index>``; a stale ``base_revision``
    raises ConflictError carrying the server's current cells. Returned cells follow request order.
    """
    classes = {c.pk: c for c in image.project.classes.all()}
    clean, errors = _cell_payload_errors(cells, image=image, classes=classes)
    if errors:
        raise ServiceValidationError("Some cells are invalid; nothing was saved.", errors)
    desired = [{"id": c["id"], "class_id": c["class_id"], "polygon": c["polygon"]} for c in clean]
    with transaction.atomic():
        return _apply_layer(image=image, user=user, base_revision=base_revision, desired=desired, action="replace")


def revision_restore(*, image: Image, user: User, target_revision: int, base_revision: int) -> LayerWrite:
    """Make the annotation layer what it was at ``target_revision`` (a new revision; history kept)."""
    if target_revision == 0:
        snapshot: list[dict[str, Any]] = []
    else:
        entry = image.history.filter(revision=target_revision).first()
        if entry is None:
            raise ServiceValidationError(
                "No such revision.", {"revision": f"revision {target_revision} does not exist"}
            )
        snapshot = entry.snapshot
    existing_ids = set(Cell.objects.filter(image_id=image.pk).values_list("pk", flat=True))
    taken_elsewhere = set(
        Cell.objects.filter(pk__in=[c["id"] for c in snapshot]).exclude(image_id=image.pk).values_list("pk", flat=True)
    )
    classes = set(image.project.classes.values_list("pk", flat=True))
    desired = []
    for cell in snapshot:
        if cell["class_id"] not in classes:
            raise ConflictError(f"Revision {target_revision} uses a class that was deleted.")
        points = cell["polygon"]
        shape = Polygon(points)
        x0, y0, x1, y1 = shape.bounds
        desired.append(
            {
                "id": cell["id"],
                "restore_id": cell["id"]
                if cell["id"] not in existing_ids and cell["id"] not in taken_elsewhere
                else None,
                "class_id": cell["class_id"],
                "polygon": CleanPolygon(
                    points=points, area=shape.area, bbox=(x0, y0, x1 - x0, y1 - y0), repaired=False
                ),
                "source": cell["source"],
                "score": cell["score"],
                "model_version_id": cell["model_version_id"],
                "author_id": cell["author_id"],
                "provenance": cell["provenance"],
            }
        )
    with transaction.atomic():
        return _apply_layer(
            image=image, user=user, base_revision=base_revision, desired=desired, action=f"restore:{target_revision}"
        )


def _proposal_query(*, image: Image, ids: list[int] | None, select_all: bool) -> Any:
    if not select_all and not ids:
        raise ServiceValidationError("Nothing selected.", {"ids": "send ids or all: true"})
    queryset = Cell.objects.filter(image_id=image.pk, layer=Layer.PROPOSAL, state="")
    if not select_all:
        assert ids is not None
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ServiceValidationError("Invalid ids.", {"ids": "must be a list of integers"})
        queryset = queryset.filter(pk__in=ids)
        found = set(queryset.values_list("pk", flat=True))
        missing = sorted(set(ids) - found)
        if missing:
            raise ServiceValidationError(
                "Some proposals are not open proposals of this image.",
                {"ids": f"not open proposals of this image: {missing[:20]}"},
            )
    return queryset


def proposals_accept(
    *, image: Image, user: User, base_revision: int, ids: list[int] | None, select_all: bool = False
) -> LayerWrite:
    """Copy open proposals into the annotation layer (a new revision, 409 rules as for saves),
    keeping their provenance (proposal id, model version, score); the proposals become accepted."""
    with transaction.atomic():
        proposals = list(_proposal_query(image=image, ids=ids, select_all=select_all).select_for_update())
        desired = [
            {
                "id": None,
                "class_id": p.cell_class_id,
                "polygon": CleanPolygon(
                    points=p.polygon, area=p.area, bbox=(p.bbox_x, p.bbox_y, p.bbox_w, p.bbox_h), repaired=False
                ),
                "source": CellSource.MODEL,
                "score": p.score,
                "model_version_id": p.model_version_id,
                "provenance": {"proposal_id": p.pk, "accepted_by": user.pk},
            }
            for p in proposals
        ]
        result = _apply_layer(
            image=image,
            user=user,
            base_revision=base_revision,
            desired=desired,
            action="accept_proposals",
            keep_missing=True,
        )
        Cell.objects.filter(pk__in=[p.pk for p in proposals]).update(state="accepted", updated_at=timezone.now())
    return result


def proposals_reject(*, image: Image, user: User, ids: list[int] | None, select_all: bool = False) -> int:
    """Mark open proposals rejected (kept for correction analytics); returns how many."""
    with transaction.atomic():
        count = _proposal_query(image=image, ids=ids, select_all=select_all).update(
            state="rejected", updated_at=timezone.now()
        )
        audit_record(
            project=image.project,
            image=image,
            actor=user,
            action="proposals.reject",
            after={"count": count, "ids": ids, "all": select_all},
        )
    return count


# --- idempotency ---------------------------------------------------------------------------


def idempotent_call(
    *,
    user: User,
    key: str | None,
    scope: str,
    payload: Any,
    run: Callable[[], tuple[int, dict[str, Any]]],
) -> tuple[int, dict[str, Any]]:
    """Run a write once per (user, Idempotency-Key): a retry replays the stored response.

    The record is written in the same transaction as the write, so a retry after a lost
    response can never apply the write twice. Reusing a key for a different request is an error.
    """
    if not key:
        return run()
    if len(key) > 128:
        raise ServiceValidationError("Invalid Idempotency-Key.", {"Idempotency-Key": "at most 128 characters"})
    request_hash = hashlib.sha256(json.dumps([scope, payload], sort_keys=True, default=str).encode()).hexdigest()

    def replay(record: IdempotencyRecord) -> tuple[int, dict[str, Any]]:
        if record.request_hash != request_hash:
            raise ServiceValidationError(
                "Idempotency-Key reused for a different request.",
                {"Idempotency-Key": "this key was already used for a different request"},
            )
        return record.status_code, record.response

    record = IdempotencyRecord.objects.filter(user=user, key=key).first()
    if record is not None:
        return replay(record)
    try:
        with transaction.atomic():
            status, body = run()
            # Stored and returned in its JSON form so that a replay is byte-for-byte the same.
            body = json.loads(json.dumps(body, cls=JSONEncoder))
            IdempotencyRecord.objects.create(
                user=user, key=key, scope=scope, request_hash=request_hash, status_code=status, response=body
            )
            return status, body
    except IntegrityError:
        # A concurrent request with the same key committed first: its response is the answer.
        record = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if record is None:
            raise
        return replay(record)


def idempotency_prune() -> int:
    """Delete idempotency records older than IDEMPOTENCY_TTL_HOURS; returns how many."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
