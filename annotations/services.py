"""Writes: every change to projects, memberships, tokens, images and cells goes through here."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

from django.apps import apps
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from rest_framework.exceptions import PermissionDenied
from rest_framework.utils.encoders import JSONEncoder
from shapely.geometry import Polygon

from annotations import selectors
from annotations.consensus import (
    ACCEPT,
    ADD,
    EDIT,
    REJECT,
    ConsensusCell,
    ExpertCell,
    ExpertReview,
    RasterCache,
    consensus_build,
    pair_agreement,
    proposal_relation,
)
from annotations.errors import ConflictError, RateLimitedError, ServiceValidationError
from annotations.geometry import CleanPolygon, GeometryError, geometry_digest, polygon_clean, polygons_clean
from annotations.imaging import DecodedImage, ImageRejected, encode_png, encode_thumbnail, image_decode
from annotations.models import (
    ActiveLearningOrder,
    AnnotationRevision,
    ApiToken,
    AuditEvent,
    Bethesda,
    Cell,
    CellClass,
    CellSource,
    CorrectionKind,
    CorrectionRecord,
    Dispute,
    DisputeStatus,
    IdempotencyRecord,
    Image,
    ImageStatus,
    Layer,
    PairAgreement,
    Project,
    ProjectMembership,
    Review,
    ReviewComment,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewStatus,
    Role,
    RoundStatus,
    Split,
    VerificationRound,
    VerificationSettings,
)
from annotations.selectors import CELL_FIELDS
from inference.backends import backend_names, backend_settings_errors

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


def pipeline_errors(pipeline: Any) -> dict[str, str]:
    """What is wrong with a project's ``pipeline`` settings, as ``{"pipeline.<path>": message}``.

    Keys are ``split_ratios`` and backend names; each backend's settings are checked against
    its schema (``inference.backends``) with server paths refused: a path here would let a
    project admin make a worker load any file on the server.
    """
    if not isinstance(pipeline, dict):
        return {"pipeline": "must be an object"}
    errors: dict[str, str] = {}
    for key, value in pipeline.items():
        where = f"pipeline.{key}"
        if key == "split_ratios":
            problem = _split_ratios_problem(value)
            if problem:
                errors[where] = problem
        elif key in backend_names():
            for sub, message in backend_settings_errors(key, value, allow_paths=False).items():
                errors[f"{where}.{sub}" if sub else where] = message
        else:
            errors[where] = f"unknown key; known: split_ratios, {', '.join(backend_names())}"
    return errors


def _split_ratios_problem(value: Any) -> str | None:
    if not isinstance(value, dict) or set(value) - set(DEFAULT_SPLIT_RATIOS):
        return "must be an object with train, validation and test fractions"
    numbers = list(value.values())
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in numbers):
        return "each fraction must be a number in [0, 1]"
    if abs(sum(numbers) - 1.0) > 1e-6:
        return "the fractions must add up to 1"
    return None


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
    if "pipeline" in data:
        errors.update(pipeline_errors(data["pipeline"]))
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
        {
            "name": name,
            "experts_required": experts_required,
            "quorum": quorum,
            "match_iou": match_iou,
            "pipeline": pipeline or {},
        }
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
    reviews_release_if_ineligible(project=project, user=user)  # a role without review gives up open reviews
    return membership


def membership_remove(*, membership: ProjectMembership) -> None:
    project = membership.project
    if (
        membership.role == Role.ADMIN
        and not project.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk).exists()
    ):
        raise ConflictError("A project must keep at least one admin.")
    membership.delete()
    reviews_release_if_ineligible(project=project, user=membership.user)  # open reviews are reassigned


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
        frozen_tests = apps.get_model("training", "FrozenTestImage")
        if frozen_tests.objects.filter(image_id=image.pk).exists():
            raise ServiceValidationError(
                "The split is fixed.",
                {"split": "this image is in the project's frozen test split, which it never leaves"},
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
    errors: dict[str, Any] = {}
    seen_ids: set[int] = set()
    candidates: list[tuple[int, int | None, int, object]] = []
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
        candidates.append((index, cell_id, class_id, raw.get("polygon")))
    checked = polygons_clean(
        [c[3] for c in candidates], width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
    )
    clean: list[dict[str, Any]] = []
    for (index, cell_id, class_id, _), polygon in zip(candidates, checked, strict=True):
        if isinstance(polygon, GeometryError):
            errors[f"cells.{index}"] = str(polygon)
        else:
            clean.append({"id": cell_id, "class_id": class_id, "polygon": polygon})
    return clean, errors


def _snapshot(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History form of cell rows: what a restore needs to re-create each cell exactly."""
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
    rows = json.loads(selectors.cells_json(image=image, layer=Layer.ANNOTATION))
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
    annotation_write_check(image=locked)  # locked from submission until an admin reopens (409)
    if locked.revision != base_revision:
        raise _conflict(locked)
    now = timezone.now()
    # Existing cells as plain rows with the polygon as JSON text: comparing texts finds the
    # unchanged cells without decoding every stored vertex (the hot path of autosave).
    meta_fields = [f for f in CELL_FIELDS if f != "polygon"]
    existing: dict[int, dict[str, Any]] = {}
    for row in (
        Cell.objects.filter(image_id=image.pk, layer=Layer.ANNOTATION)
        .annotate(polygon_text=Cast("polygon", TextField()))
        .values_list(*meta_fields, "polygon_text")
    ):
        record = dict(zip(meta_fields, row, strict=False))
        record["polygon_text"] = row[-1]
        existing[record["id"]] = record
    kept: set[int] = set()
    order: list[dict[str, Any]] = []
    to_create: list[Cell] = []
    to_update: list[Cell] = []
    update_fields = [
        "polygon", "cell_class_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "area", "geometry_digest", "updated_at"
    ]
    for item in desired:
        polygon = item["polygon"]
        found: dict[str, Any] | None = existing.get(item["id"]) if item.get("id") is not None else None
        if found is not None and found["id"] not in kept:
            record = found
            kept.add(record["id"])
            record["polygon"] = polygon.points
            digest = polygon.digest or geometry_digest(polygon.points)
            # Cells written before digests existed (or by other paths) compare by their JSON text.
            same_shape = (
                record["geometry_digest"] == digest
                if record["geometry_digest"]
                else record["polygon_text"] == json.dumps(polygon.points)
            )
            if not same_shape or record["cell_class_id"] != item["class_id"]:
                x, y, w, h = polygon.bbox
                record.update(
                    cell_class_id=item["class_id"], bbox_x=x, bbox_y=y, bbox_w=w, bbox_h=h, area=polygon.area,
                    geometry_digest=digest, updated_at=now,
                )
                fields = {f: record[f] for f in update_fields[1:]}
                to_update.append(Cell(pk=record["id"], polygon=polygon.points, **fields))
            order.append(record)
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
                geometry_digest=polygon.digest or geometry_digest(polygon.points),
                score=item.get("score"),
                source=item.get("source", CellSource.MANUAL),
                model_version_id=item.get("model_version_id"),
                provenance=item.get("provenance") or {},
                author_id=item.get("author_id", user.pk if user else None),
                created_at=now,
                updated_at=now,
            )
            to_create.append(cell)
            order.append({"_new": cell})
    deleted = [] if keep_missing else [pk for pk in existing if pk not in kept]
    if deleted:
        Cell.objects.filter(pk__in=deleted).delete()
    if to_update:
        Cell.objects.bulk_update(to_update, update_fields)
    if to_create:
        Cell.objects.bulk_create(to_create)
    order = [{f: getattr(r["_new"], f) for f in CELL_FIELDS} if "_new" in r else r for r in order]
    untouched = [r for pk, r in existing.items() if pk not in kept and pk not in deleted]
    for record in untouched:
        record["polygon"] = json.loads(record["polygon_text"])
    rows = sorted(
        ({f: r[f] for f in CELL_FIELDS} for r in [*untouched, *order]), key=lambda r: r["id"]
    )
    summary = {"added": len(to_create), "changed": len(to_update), "deleted": len(deleted)}
    revision = base_revision + 1
    Image.objects.filter(pk=image.pk).update(revision=revision, updated_at=now)
    annotation_write_started(image=locked, user=user)  # first write: annotator recorded, status annotating
    image.status, image.annotator_id = locked.status, locked.annotator_id
    written = {c.pk for c in to_update} | {c.pk for c in to_create}
    AnnotationRevision.objects.create(
        image_id=image.pk,
        revision=revision,
        author=user,
        action=action,
        summary=summary,
        changes={"upserted": _snapshot([r for r in rows if r["id"] in written]), "deleted": deleted},
    )
    image.revision = revision
    by_pk = {r["id"]: r for r in rows}
    return LayerWrite(revision=revision, cells=[by_pk[r["id"]] for r in order], layer=rows, summary=summary)


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
    if target_revision != 0 and not image.history.filter(revision=target_revision).exists():
        raise ServiceValidationError("No such revision.", {"revision": f"revision {target_revision} does not exist"})
    snapshot = selectors.revision_state(image=image, revision=target_revision)
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
        annotation_write_check(image=Image.objects.select_for_update().get(pk=image.pk))
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


# =========================================================================================
# Verification: image states, review assignment, blind reviews, consensus, adjudication,
# the verified (gold) layer, agreement and correction analytics. Rules: docs/api.md
# ("Verification") and annotations/consensus.py.
# =========================================================================================

# action -> (states it may start from, state it leads to). ``close_review`` ends in whatever
# the consensus decides (verified or disputed).
TRANSITIONS: dict[str, tuple[frozenset[str], str | None]] = {
    "start": (frozenset({ImageStatus.NEW, ImageStatus.PRE_SEGMENTED}), ImageStatus.ANNOTATING),
    "submit": (frozenset({ImageStatus.ANNOTATING}), ImageStatus.SUBMITTED),
    "close_review": (frozenset({ImageStatus.IN_REVIEW}), None),
    "start_adjudication": (frozenset({ImageStatus.DISPUTED}), ImageStatus.ADJUDICATION),
    "reopen": (selectors.REVIEW_LOCKED_STATUSES, ImageStatus.ANNOTATING),
}
# Every edge the workflow may take, by an action or on its own (assignment, consensus).
_EDGES: frozenset[tuple[str, str]] = frozenset(
    {
        (ImageStatus.NEW, ImageStatus.ANNOTATING),
        (ImageStatus.PRE_SEGMENTED, ImageStatus.ANNOTATING),
        (ImageStatus.ANNOTATING, ImageStatus.SUBMITTED),
        (ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW),
        (ImageStatus.IN_REVIEW, ImageStatus.VERIFIED),
        (ImageStatus.IN_REVIEW, ImageStatus.DISPUTED),
        (ImageStatus.DISPUTED, ImageStatus.ADJUDICATION),
        (ImageStatus.ADJUDICATION, ImageStatus.VERIFIED),
    }
    | {(s, ImageStatus.ANNOTATING) for s in selectors.REVIEW_LOCKED_STATUSES}
)
COMMENT_MAX_CHARS = 2000


def _status_label(status: str) -> str:
    return str(ImageStatus(status).label).lower()


def _status_set(*, image: Image, to: str, actor: User | None, action: str) -> None:
    """Move ``image`` (locked by the caller) along one edge of the workflow and audit it."""
    before = image.status
    if (before, to) not in _EDGES:
        raise ConflictError(
            f"An image that is {_status_label(before)} cannot become {_status_label(to)}.", {"status": before}
        )
    Image.objects.filter(pk=image.pk).update(status=to, updated_at=timezone.now())
    image.status = to
    audit_record(
        project=image.project,
        image=image,
        actor=actor,
        action="image.transition",
        target=action,
        before={"status": before},
        after={"status": to},
    )


def _image_lock(image: Image) -> Image:
    locked = Image.objects.select_for_update().select_related("project").get(pk=image.pk)
    image.status, image.annotator_id, image.revision = locked.status, locked.annotator_id, locked.revision
    return locked


def annotation_write_check(*, image: Image) -> None:
    """Refuse writes to the annotation layer (409) from submission until an admin reopens the image."""
    if image.status in selectors.REVIEW_LOCKED_STATUSES:
        raise ConflictError(
            f"The image is {_status_label(image.status)}; its annotations are locked until an admin reopens it.",
            {"status": image.status},
        )


def annotation_write_started(*, image: Image, user: User | None) -> None:
    """After an accepted annotation write: the first writer becomes the image's annotator and a
    new or pre-segmented image moves to ``annotating``. ``image`` is locked by the caller."""
    if image.annotator_id is None and user is not None:
        Image.objects.filter(pk=image.pk).update(annotator=user)
        image.annotator_id = user.pk
    if image.status in (ImageStatus.NEW, ImageStatus.PRE_SEGMENTED):
        _status_set(image=image, to=ImageStatus.ANNOTATING, actor=user, action="start")


def _require(user: User, project: Project, capability: str, why: str) -> None:
    if not selectors.user_can(user=user, project=project, capability=capability):
        raise PermissionDenied(why)


def _transition_allowed(*, user: User, image: Image, action: str) -> str | None:
    """Why ``user`` may not take ``action`` because of their role (None: they may)."""
    project = image.project
    if action == "start":
        ok = selectors.user_can(user=user, project=project, capability="annotate")
        return None if ok else "Your role may not annotate."
    if action == "submit":
        if not selectors.user_can(user=user, project=project, capability="annotate"):
            return "Your role may not annotate."
        if image.annotator_id not in (None, user.pk) and not selectors.user_can(
            user=user, project=project, capability="manage"
        ):
            return "Only the image's annotator or a project admin may submit it."
        return None
    if action == "start_adjudication":
        return None if selectors.may_adjudicate(user=user, project=project) else "You may not adjudicate."
    # close_review, reopen
    ok = selectors.user_can(user=user, project=project, capability="manage")
    return None if ok else "Only a project admin may do this."


def transitions_allowed(*, user: User, image: Image) -> list[str]:
    """The actions ``user`` may take on ``image`` now (role and state)."""
    return [
        action
        for action, (sources, _) in TRANSITIONS.items()
        if image.status in sources and _transition_allowed(user=user, image=image, action=action) is None
    ]


def image_transition(*, image: Image, user: User, action: str) -> Image:
    """Take one workflow action on an image; the only public way to change an image's status.

    Actions: ``start`` (new/pre-segmented -> annotating, the caller becomes the annotator),
    ``submit`` (annotating -> submitted -> in review: a new round, K experts assigned),
    ``close_review`` (admin: finish a round early with the reviews submitted so far, at least
    the quorum), ``start_adjudication`` (disputed -> adjudication) and ``reopen`` (admin: any
    state from submitted on -> annotating; open reviews are cancelled and the verified layer is
    withdrawn). 400 for an unknown action, 403 for the wrong role, 409 for the wrong state;
    nothing changes on refusal.
    """
    if action not in TRANSITIONS:
        raise ServiceValidationError("Unknown action.", {"action": f"must be one of {', '.join(TRANSITIONS)}"})
    refusal = _transition_allowed(user=user, image=image, action=action)
    if refusal is not None:
        raise PermissionDenied(refusal)
    with transaction.atomic():
        locked = _image_lock(image)
        sources, target = TRANSITIONS[action]
        if locked.status not in sources:
            allowed = ", ".join(_status_label(s) for s in sorted(sources))
            raise ConflictError(
                f"Cannot {action.replace('_', ' ')} an image that is {_status_label(locked.status)} "
                f"(allowed from: {allowed}).",
                {"status": locked.status, "allowed_actions": transitions_allowed(user=user, image=locked)},
            )
        if action == "start":
            annotation_write_started(image=locked, user=user)
        elif action == "submit":
            _image_submit(image=locked, user=user)
        elif action == "close_review":
            _round_close_early(image=locked, user=user)
        elif action == "reopen":
            _image_reopen(image=locked, user=user)
        else:
            assert target is not None
            _status_set(image=locked, to=target, actor=user, action=action)
    image.refresh_from_db()
    return image


def _image_submit(*, image: Image, user: User) -> None:
    project = image.project
    k = project.experts_required
    previous = image.verification_rounds.order_by("-number").values_list("number", flat=True).first() or 0
    verification_round = VerificationRound.objects.create(
        image=image,
        number=previous + 1,
        experts_required=k,
        quorum=min(project.quorum or k, k),
        match_iou=project.match_iou,
        base_revision=image.revision,
        started_by=user,
    )
    _status_set(image=image, to=ImageStatus.SUBMITTED, actor=user, action="submit")
    _reviews_fill(image=image, verification_round=verification_round, actor=user)


def _reviews_fill(*, image: Image, verification_round: VerificationRound, actor: User | None) -> list[Review]:
    """Assign experts automatically up to K: project experts, never the image's annotator nor
    anyone already assigned in this round, fewest open reviews in the project first (then fewest
    reviews done, then user id). An image with at least one reviewer is in review; open slots
    are left for an admin to fill by hand and are audited as ``review.unstaffed``."""
    live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED).count()
    needed = verification_round.experts_required - live
    created: list[Review] = []
    if needed > 0:
        project = image.project
        taken = set(verification_round.reviews.values_list("reviewer_id", flat=True))
        if image.annotator_id is not None:
            taken.add(image.annotator_id)
        in_project = Q(reviews__image__project=project)
        candidates = list(
            User.objects.filter(memberships__project=project, memberships__role=Role.EXPERT, is_active=True)
            .exclude(pk__in=taken)
            .annotate(
                open_load=Count("reviews", filter=in_project & Q(reviews__status=ReviewStatus.ASSIGNED), distinct=True),
                done=Count("reviews", filter=in_project & Q(reviews__status=ReviewStatus.SUBMITTED), distinct=True),
            )
            .order_by("open_load", "done", "id")[:needed]
        )
        created = [
            Review.objects.create(round=verification_round, image=image, reviewer=expert, assigned_by=None)
            for expert in candidates
        ]
        for review in created:
            audit_record(
                project=project,
                image=image,
                actor=actor,
                action="review.assign",
                target=review.reviewer.username,
                after={"review": review.pk, "reviewer": review.reviewer_id, "manual": False},
            )
        if len(created) < needed:
            audit_record(
                project=project,
                image=image,
                actor=actor,
                action="review.unstaffed",
                after={"round": verification_round.number, "open_slots": needed - len(created)},
            )
    if image.status == ImageStatus.SUBMITTED and live + len(created) > 0:
        _status_set(image=image, to=ImageStatus.IN_REVIEW, actor=actor, action="assign")
    return created


def _round_open(image: Image) -> VerificationRound:
    current = selectors.round_current(image=image)
    if current is None or current.status != RoundStatus.OPEN:
        raise ConflictError("The image has no open review round.", {"status": image.status})
    return current


def review_assign(*, image: Image, actor: User, reviewer: User) -> Review:
    """An admin assigns ``reviewer`` (an expert or admin of the project, not the image's
    annotator) to the image's open round, up to K reviewers."""
    _require(actor, image.project, "manage", "Only a project admin may assign reviewers.")
    with transaction.atomic():
        locked = _image_lock(image)
        if locked.status not in (ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW):
            raise ConflictError(
                f"Reviewers are assigned to submitted images; this one is {_status_label(locked.status)}.",
                {"status": locked.status},
            )
        verification_round = _round_open(locked)
        if not selectors.user_can(user=reviewer, project=locked.project, capability="review"):
            raise ServiceValidationError("Not a reviewer.", {"reviewer": "must be an expert or admin of this project"})
        if reviewer.pk == locked.annotator_id:
            raise ServiceValidationError("Not independent.", {"reviewer": "the image's annotator cannot review it"})
        live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED)
        if live.filter(reviewer=reviewer).exists():
            raise ServiceValidationError("Already assigned.", {"reviewer": "already reviews this image"})
        if live.count() >= verification_round.experts_required:
            raise ConflictError(
                f"The image already has {verification_round.experts_required} reviewers; unassign one first.",
                {"status": locked.status},
            )
        review = Review.objects.create(
            round=verification_round, image=locked, reviewer=reviewer, manual=True, assigned_by=actor
        )
        audit_record(
            project=locked.project,
            image=locked,
            actor=actor,
            action="review.assign",
            target=reviewer.username,
            after={"review": review.pk, "reviewer": reviewer.pk, "manual": True},
        )
        if locked.status == ImageStatus.SUBMITTED:
            _status_set(image=locked, to=ImageStatus.IN_REVIEW, actor=actor, action="assign")
    return review


def _review_cancel(*, review: Review, actor: User | None, reason: str) -> None:
    """Cancel an open assignment; its draft (decisions, comments) is discarded."""
    discarded = {"decisions": review.decisions.count(), "comments": review.comments.count()}
    review.decisions.all().delete()
    review.comments.all().delete()
    review.status = ReviewStatus.CANCELLED
    review.cancelled_at = timezone.now()
    review.cancel_reason = reason[:200]
    review.save(update_fields=["status", "cancelled_at", "cancel_reason", "updated_at"])
    audit_record(
        project=review.image.project,
        image=review.image,
        actor=actor,
        action="review.cancel",
        target=str(review.reviewer_id),
        before={"status": ReviewStatus.ASSIGNED, "draft": discarded},
        after={"status": ReviewStatus.CANCELLED, "reason": reason},
    )


def review_unassign(*, review: Review, actor: User) -> None:
    """An admin cancels an open assignment (the draft is discarded; the slot is left open)."""
    _require(actor, review.image.project, "manage", "Only a project admin may unassign reviewers.")
    with transaction.atomic():
        _image_lock(review.image)
        locked = Review.objects.select_for_update().select_related("image__project").get(pk=review.pk)
        if locked.status != ReviewStatus.ASSIGNED:
            raise ConflictError(f"This review is {locked.status}; only open assignments can be cancelled.")
        _review_cancel(review=locked, actor=actor, reason="unassigned by an admin")


def reviews_release_if_ineligible(*, project: Project, user: User) -> int:
    """Cancel ``user``'s open reviews in ``project`` once they may no longer review (removed from
    the project, or their role lost the review capability): drafts are discarded and each image
    is reassigned to another expert when one is available. Submitted reviews stand."""
    if selectors.user_can(user=user, project=project, capability="review"):
        return 0
    open_reviews = list(
        Review.objects.filter(reviewer=user, image__project=project, status=ReviewStatus.ASSIGNED).select_related(
            "image__project", "round"
        )
    )
    with transaction.atomic():
        for review in open_reviews:
            image = _image_lock(review.image)
            _review_cancel(review=review, actor=None, reason="reviewer no longer an expert of the project")
            if review.round.status == RoundStatus.OPEN:
                _reviews_fill(image=image, verification_round=review.round, actor=None)
    return len(open_reviews)


def _review_for_update(*, image: Image, user: User) -> tuple[Image, Review]:
    locked_image = _image_lock(image)
    current = selectors.round_current(image=locked_image)
    review = (
        Review.objects.select_for_update()
        .filter(round=current, reviewer=user)
        .exclude(status=ReviewStatus.CANCELLED)
        .first()
        if current is not None
        else None
    )
    if review is None:
        raise PermissionDenied("You are not assigned to review this image.")
    return locked_image, review


def _draft_parse(
    *, image: Image, decisions: object, added: object, comments: object
) -> tuple[list[ReviewDecision], list[ReviewComment]]:
    """Validate a draft; errors are keyed ``decisions.<i>``, ``added.<i>``, ``comments.<i>``."""
    annotation = {c["pk"]: c for c in image.cells.filter(layer=Layer.ANNOTATION).values("pk", "cell_class_id")}
    classes = set(image.project.classes.values_list("pk", flat=True))
    errors: dict[str, Any] = {}
    rows: list[ReviewDecision] = []
    notes: list[ReviewComment] = []

    def polygon(raw: object, key: str) -> list[list[float]] | None:
        try:
            return polygon_clean(
                raw, width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
            ).points
        except GeometryError as exc:
            errors[key] = str(exc)
            return None

    def as_list(value: object, name: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            errors[name] = "must be a list"
            return []
        return value

    seen: set[int] = set()
    for index, item in enumerate(as_list(decisions, "decisions")):
        key = f"decisions.{index}"
        if not isinstance(item, dict):
            errors[key] = "must be an object with cell_id and decision"
            continue
        cell_id, kind, class_id = item.get("cell_id"), item.get("decision"), item.get("class_id")
        if not isinstance(cell_id, int) or isinstance(cell_id, bool) or cell_id not in annotation:
            errors[key] = f"cell_id {cell_id!r} is not an annotation cell of this image"
        elif cell_id in seen:
            errors[key] = f"cell {cell_id} is decided twice"
        elif kind not in (ReviewDecisionKind.ACCEPT, ReviewDecisionKind.REJECT, ReviewDecisionKind.EDIT):
            errors[key] = "decision must be accept, reject or edit"
        elif kind != ReviewDecisionKind.EDIT and (item.get("polygon") is not None or class_id is not None):
            errors[key] = "only an edit carries a polygon or a class_id"
        elif kind == ReviewDecisionKind.EDIT and class_id is not None and class_id not in classes:
            errors[key] = f"class_id {class_id!r} is not a class of this project"
        else:
            seen.add(cell_id)
            points = polygon(item.get("polygon"), key) if kind == ReviewDecisionKind.EDIT else None
            if kind != ReviewDecisionKind.EDIT or points is not None:
                rows.append(ReviewDecision(cell_id=cell_id, decision=kind, cell_class_id=class_id, polygon=points))
    for index, item in enumerate(as_list(added, "added")):
        key = f"added.{index}"
        if not isinstance(item, dict) or item.get("class_id") not in classes:
            errors[key] = "must be an object with a class_id of this project and a polygon"
            continue
        points = polygon(item.get("polygon"), key)
        if points is not None:
            rows.append(ReviewDecision(decision=ReviewDecisionKind.ADD, cell_class_id=item["class_id"], polygon=points))
    for index, item in enumerate(as_list(comments, "comments")):
        key = f"comments.{index}"
        text = item.get("text") if isinstance(item, dict) else None
        cell_id = item.get("cell_id") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > COMMENT_MAX_CHARS:
            errors[key] = f"text must be 1 to {COMMENT_MAX_CHARS} characters"
        elif cell_id is not None and cell_id not in annotation:
            errors[key] = f"cell_id {cell_id!r} is not an annotation cell of this image"
        else:
            notes.append(ReviewComment(cell_id=cell_id, text=text.strip()))
    if len(rows) > settings.CELL_MAX_PER_IMAGE * 2:
        errors["decisions"] = "too many decisions"
    if errors:
        raise ServiceValidationError("The review draft is invalid; nothing was saved.", errors)
    return rows, notes


def _review_writable(*, image: Image, review: Review) -> None:
    if review.status == ReviewStatus.SUBMITTED:
        raise ConflictError("Your review of this image is submitted and can no longer change.", {"status": "submitted"})
    if image.status != ImageStatus.IN_REVIEW:
        raise ConflictError(
            f"The image is {_status_label(image.status)}; reviews are written while it is in review.",
            {"status": image.status},
        )


def review_draft_save(*, image: Image, user: User, decisions: object, added: object, comments: object) -> Review:
    """Replace the caller's draft review of ``image``: a decision per annotation cell (accept,
    reject, or edit with the expert's own polygon and optionally class), added cells and
    comments. Only the author sees a draft; 409 once submitted or when the image is not in review."""
    with transaction.atomic():
        locked, review = _review_for_update(image=image, user=user)
        _review_writable(image=locked, review=review)
        rows, notes = _draft_parse(image=locked, decisions=decisions, added=added, comments=comments)
        review.decisions.all().delete()
        review.comments.all().delete()
        ReviewDecision.objects.bulk_create(ReviewDecision(review=review, **_decision_fields(r)) for r in rows)
        ReviewComment.objects.bulk_create(ReviewComment(review=review, cell_id=n.cell_id, text=n.text) for n in notes)
        review.save(update_fields=["updated_at"])
        audit_record(
            project=locked.project,
            image=locked,
            actor=user,
            action="review.draft",
            target=str(review.pk),
            # Sizes only: the audit log must not reveal a blind draft's decisions.
            after={"items": len(rows), "comments": len(notes)},
        )
    return review


def _decision_fields(row: ReviewDecision) -> dict[str, Any]:
    return {
        "cell_id": row.cell_id,
        "decision": row.decision,
        "cell_class_id": row.cell_class_id,
        "polygon": row.polygon,
    }


def review_submit(*, image: Image, user: User, accept_undecided: bool = False) -> tuple[Review, bool]:
    """Submit the caller's review; returns it and whether this call submitted it.

    Idempotent: submitting an already submitted review changes nothing. Every annotation cell
    needs a decision, unless ``accept_undecided`` accepts the undecided ones. When the last
    reviewer of the round submits, the consensus runs (verified, or disputed for adjudication).
    """
    with transaction.atomic():
        locked, review = _review_for_update(image=image, user=user)
        if review.status == ReviewStatus.SUBMITTED:
            return review, False
        _review_writable(image=locked, review=review)
        decided = set(review.decisions.filter(cell__isnull=False).values_list("cell_id", flat=True))
        cells = set(locked.cells.filter(layer=Layer.ANNOTATION).values_list("pk", flat=True))
        undecided = sorted(cells - decided)
        if undecided and not accept_undecided:
            raise ServiceValidationError(
                "Some cells have no decision.",
                {"decisions": f"no decision for cells {undecided[:50]}; decide them or send accept_undecided: true"},
            )
        ReviewDecision.objects.bulk_create(
            ReviewDecision(review=review, cell_id=cell_id, decision=ReviewDecisionKind.ACCEPT) for cell_id in undecided
        )
        counts = Counter(review.decisions.values_list("decision", flat=True))
        review.n_accept = counts[ReviewDecisionKind.ACCEPT]
        review.n_reject = counts[ReviewDecisionKind.REJECT]
        review.n_edit = counts[ReviewDecisionKind.EDIT]
        review.n_add = counts[ReviewDecisionKind.ADD]
        review.status = ReviewStatus.SUBMITTED
        review.submitted_at = timezone.now()
        review.save()
        audit_record(
            project=locked.project,
            image=locked,
            actor=user,
            action="review.submit",
            target=str(review.pk),
            after={
                "accepted": review.n_accept,
                "rejected": review.n_reject,
                "edited": review.n_edit,
                "added": review.n_add,
                "auto_accepted": len(undecided),
            },
        )
        verification_round = review.round
        live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED)
        if (
            not live.filter(status=ReviewStatus.ASSIGNED).exists()
            and live.count() >= verification_round.experts_required
        ):
            _round_consensus(image=locked, verification_round=verification_round, actor=user)
    return review, True


def _round_close_early(*, image: Image, user: User) -> None:
    verification_round = _round_open(image)
    submitted = verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).count()
    if submitted < verification_round.quorum:
        raise ConflictError(
            f"Only {submitted} review(s) submitted; closing needs at least the quorum ({verification_round.quorum}).",
            {"status": image.status},
        )
    for review in verification_round.reviews.filter(status=ReviewStatus.ASSIGNED).select_related("image__project"):
        _review_cancel(review=review, actor=user, reason="round closed early by an admin")
    _round_consensus(image=image, verification_round=verification_round, actor=user)


def _annotation_cells(image: Image) -> dict[int, dict[str, Any]]:
    rows = image.cells.filter(layer=Layer.ANNOTATION).values(
        "pk", "cell_class_id", "polygon", "provenance", "author_id", "source", "model_version_id", "score"
    )
    return {r["pk"]: dict(r) for r in rows}


def _expert_reviews(
    reviews: list[Review], annotation: dict[int, dict[str, Any]]
) -> tuple[list[ExpertReview], dict[int, dict[int, ReviewDecision]]]:
    """The consensus input, and each review's decision per annotation cell."""
    out: list[ExpertReview] = []
    by_cell: dict[int, dict[int, ReviewDecision]] = {}
    for review in reviews:
        cells: list[ExpertCell] = []
        rejected: set[int] = set()
        mine = by_cell.setdefault(review.pk, {})
        for d in review.decisions.all():
            if d.decision == ReviewDecisionKind.ADD:
                if d.polygon and d.cell_class_id:
                    cells.append(ExpertCell(review.pk, d.polygon, d.cell_class_id, ADD))
                continue
            origin = annotation.get(d.cell_id) if d.cell_id is not None else None
            if origin is None:
                continue
            mine[origin["pk"]] = d
            if d.decision == ReviewDecisionKind.REJECT:
                rejected.add(origin["pk"])
            elif d.decision == ReviewDecisionKind.EDIT and d.polygon:
                cells.append(
                    ExpertCell(review.pk, d.polygon, d.cell_class_id or origin["cell_class_id"], EDIT, origin["pk"])
                )
            else:
                cells.append(ExpertCell(review.pk, origin["polygon"], origin["cell_class_id"], ACCEPT, origin["pk"]))
        out.append(ExpertReview(key=review.pk, cells=cells, rejected=frozenset(rejected)))
    return out, by_cell


def _version(
    review: Review, cell: ConsensusCell, decisions: dict[int, ReviewDecision], annotation: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """One expert's version of a disputed cell, for the adjudicator's side-by-side view."""
    base = {"review_id": review.pk, "reviewer_id": review.reviewer_id}
    member = next((m for m in cell.members if m.review == review.pk), None)
    if member is not None:
        return base | {"decision": member.decision, "polygon": member.polygon, "class_id": member.class_id}
    decision = decisions.get(cell.origin) if cell.origin is not None else None
    if decision is None or cell.origin is None:
        return base | {"decision": "absent", "polygon": None, "class_id": None}
    origin = annotation[cell.origin]
    if decision.decision == ReviewDecisionKind.REJECT:
        return base | {"decision": "reject", "polygon": None, "class_id": None}
    if decision.decision == ReviewDecisionKind.EDIT:
        return base | {
            "decision": "edit",
            "polygon": decision.polygon,
            "class_id": decision.cell_class_id or origin["cell_class_id"],
        }
    return base | {"decision": "accept", "polygon": origin["polygon"], "class_id": origin["cell_class_id"]}


def _agreed_entry(cell: ConsensusCell, reviewers: dict[int, int], rejected_by: list[int]) -> dict[str, Any]:
    def who(kind: str) -> list[int]:
        return sorted(reviewers[m.review] for m in cell.members if m.decision == kind)

    return {
        "polygon": cell.polygon,
        "class_id": cell.class_id,
        "origin_cell_id": cell.origin,
        "review_ids": sorted(m.review for m in cell.members),
        "accepted_by": who(ACCEPT),
        "edited_by": who(EDIT),
        "added_by": who(ADD),
        "rejected_by": rejected_by,
        "fusion": cell.fusion,
    }


def _round_consensus(*, image: Image, verification_round: VerificationRound, actor: User | None) -> None:
    """Match the round's submitted reviews, record pair agreement, and either verify the image
    or open disputes for adjudication (image locked by the caller)."""
    reviews = list(
        verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).prefetch_related("decisions").order_by("id")
    )
    annotation = _annotation_cells(image)
    expert_reviews, decisions = _expert_reviews(reviews, annotation)
    cache: RasterCache = {}
    result = consensus_build(
        expert_reviews,
        quorum=verification_round.quorum,
        match_iou=verification_round.match_iou,
        height=image.height,
        width=image.width,
        cache=cache,
    )
    reviewers = {r.pk: r.reviewer_id for r in reviews}
    positives = {e.key: [c.polygon for c in e.cells] for e in expert_reviews}
    pairs = []
    ordered = sorted(reviews, key=lambda r: r.reviewer_id)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            scores = pair_agreement(
                positives[a.pk], positives[b.pk], height=image.height, width=image.width, cache=cache
            )
            pairs.append(
                PairAgreement(
                    round=verification_round,
                    image=image,
                    review_a=a,
                    review_b=b,
                    reviewer_a_id=a.reviewer_id,
                    reviewer_b_id=b.reviewer_id,
                    f1=scores.f1,
                    mean_iou=scores.mean_iou,
                    dice=scores.dice,
                    matched=scores.matched,
                    n_a=scores.n_a,
                    n_b=scores.n_b,
                )
            )
    PairAgreement.objects.bulk_create(pairs)

    def rejected_by(cell: ConsensusCell) -> list[int]:
        if cell.origin is None:
            return []
        return sorted(
            reviewers[key]
            for key, mine in decisions.items()
            if (d := mine.get(cell.origin)) is not None and d.decision == ReviewDecisionKind.REJECT
        )

    verification_round.agreed = [_agreed_entry(c, reviewers, rejected_by(c)) for c in result.verified]
    disputes = [
        Dispute(
            round=verification_round,
            image=image,
            reason=cell.reason,
            origin_cell_id=cell.origin,
            annotation=(
                {
                    "polygon": annotation[cell.origin]["polygon"],
                    "class_id": annotation[cell.origin]["cell_class_id"],
                }
                if cell.origin is not None
                else None
            ),
            versions=[_version(r, cell, decisions[r.pk], annotation) for r in reviews],
            candidate=cell.polygon,
            candidate_class_id=cell.class_id,
        )
        for cell in result.disputed
    ]
    Dispute.objects.bulk_create(disputes)
    verification_round.summary = {
        "reviews": len(reviews),
        "verified": len(result.verified),
        "disputed": len(disputes),
        "rejected": len(result.rejected_origins),
        "fused": sum(1 for c in result.verified if c.fusion == "majority_vote"),
    }
    verification_round.save(update_fields=["agreed", "summary"])
    audit_record(
        project=image.project,
        image=image,
        actor=actor,
        action="consensus",
        target=f"round {verification_round.number}",
        after=verification_round.summary,
    )
    if disputes:
        verification_round.status = RoundStatus.DISPUTED
        verification_round.save(update_fields=["status"])
        _status_set(image=image, to=ImageStatus.DISPUTED, actor=actor, action="consensus")
    else:
        _image_verify(image=image, verification_round=verification_round, actor=actor, cache=cache)


def _polygon_stored(points: list[list[float]], image: Image) -> CleanPolygon:
    try:
        return polygon_clean(points, width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES)
    except GeometryError:
        # Fused contours come from pixel masks and are valid; keep the geometry as it is.
        shape = Polygon(points)
        x0, y0, x1, y1 = shape.bounds
        return CleanPolygon(points=points, area=shape.area, bbox=(x0, y0, x1 - x0, y1 - y0), repaired=False)


def _image_verify(
    *, image: Image, verification_round: VerificationRound, actor: User | None, cache: RasterCache | None = None
) -> None:
    """Write the verified (gold) layer from the agreed cells and the adjudicated disputes, with
    provenance; record correction analytics and each review's agreement with the result."""
    cache = {} if cache is None else cache
    annotation = _annotation_cells(image)
    final: list[dict[str, Any]] = [dict(entry) for entry in verification_round.agreed]
    for dispute in verification_round.disputes.filter(status=DisputeStatus.RESOLVED).order_by("id"):
        if dispute.polygon is None or dispute.cell_class_id is None:
            continue
        final.append(
            {
                "polygon": dispute.polygon,
                "class_id": dispute.cell_class_id,
                "origin_cell_id": dispute.origin_cell_id,
                "review_ids": [v["review_id"] for v in dispute.versions if v["polygon"] is not None],
                "accepted_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == ACCEPT],
                "edited_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == EDIT],
                "added_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == ADD],
                "rejected_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == REJECT],
                "fusion": "adjudicated",
                "adjudicated_by": dispute.resolved_by_id,
                "dispute_id": dispute.pk,
                "adjudication_choice": dispute.choice,
            }
        )
    proposals = {
        p["pk"]: p
        for p in image.cells.filter(layer=Layer.PROPOSAL).values("pk", "polygon", "model_version_id", "state")
    }
    Cell.objects.filter(image=image, layer=Layer.VERIFIED).delete()
    now = timezone.now()
    cells: list[Cell] = []
    records: list[CorrectionRecord] = []
    for entry in final:
        origin = annotation.get(entry["origin_cell_id"]) if entry["origin_cell_id"] is not None else None
        origin_provenance = origin["provenance"] if origin else {}
        proposal = proposals.get(int(origin_provenance.get("proposal_id") or 0)) if origin else None
        kind, iou = proposal_relation(
            entry["polygon"],
            proposal["polygon"] if proposal else None,
            height=image.height,
            width=image.width,
            cache=cache,
        )
        provenance = entry | {
            "round": verification_round.number,
            "annotation_author_id": origin["author_id"] if origin else None,
            "annotation_source": origin["source"] if origin else None,
            "proposal_id": proposal["pk"] if proposal else None,
            "correction": kind,
            "proposal_iou": iou,
        }
        del provenance["polygon"], provenance["class_id"]
        clean = _polygon_stored(entry["polygon"], image)
        cell = Cell(
            image=image,
            layer=Layer.VERIFIED,
            cell_class_id=entry["class_id"],
            polygon=clean.points,
            bbox_x=clean.bbox[0],
            bbox_y=clean.bbox[1],
            bbox_w=clean.bbox[2],
            bbox_h=clean.bbox[3],
            area=clean.area,
            score=origin["score"] if origin else None,
            source=CellSource.CONSENSUS,
            model_version_id=proposal["model_version_id"] if proposal else None,
            provenance=provenance,
            author_id=entry.get("adjudicated_by"),
            created_at=now,
            updated_at=now,
        )
        cells.append(cell)
        records.append(
            CorrectionRecord(
                image=image,
                round=verification_round,
                model_version_id=proposal["model_version_id"] if proposal else image.presegment_model_id,
                proposal_id=proposal["pk"] if proposal else None,
                kind=kind,
                iou=iou,
            )
        )
    Cell.objects.bulk_create(cells)
    for cell, record in zip(cells, records, strict=True):
        record.verified_cell = cell
    used = {c.provenance["proposal_id"] for c in cells if c.provenance.get("proposal_id")}
    records.extend(
        CorrectionRecord(
            image=image,
            round=verification_round,
            model_version_id=p["model_version_id"],
            proposal_id=p["pk"],
            kind=CorrectionKind.IGNORED if p["state"] == "" else CorrectionKind.DELETED,
        )
        for p in proposals.values()
        if p["pk"] not in used
    )
    CorrectionRecord.objects.filter(image=image).delete()
    CorrectionRecord.objects.bulk_create(records)
    gold = [c.polygon for c in cells]
    reviews = list(verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).prefetch_related("decisions"))
    expert_reviews, _ = _expert_reviews(reviews, annotation)
    for review, expert in zip(reviews, expert_reviews, strict=True):
        scores = pair_agreement(
            [c.polygon for c in expert.cells], gold, height=image.height, width=image.width, cache=cache
        )
        review.consensus_f1, review.consensus_mean_iou, review.consensus_dice = scores.f1, scores.mean_iou, scores.dice
    Review.objects.bulk_update(reviews, ["consensus_f1", "consensus_mean_iou", "consensus_dice"])
    verification_round.status = RoundStatus.CLOSED
    verification_round.closed_at = now
    verification_round.save(update_fields=["status", "closed_at"])
    audit_record(
        project=image.project,
        image=image,
        actor=actor,
        action="image.verified",
        target=f"round {verification_round.number}",
        after={"verified_cells": len(cells), "corrections": dict(Counter(r.kind for r in records))},
    )
    _status_set(image=image, to=ImageStatus.VERIFIED, actor=actor, action="verify")


def _image_reopen(*, image: Image, user: User) -> None:
    """Back to annotating: open reviews are cancelled (drafts discarded), an unfinished round is
    cancelled, and the verified layer and its correction records are withdrawn (the reviews,
    disputes and agreement of earlier rounds stay as history)."""
    current = selectors.round_current(image=image)
    if current is not None:
        for review in current.reviews.filter(status=ReviewStatus.ASSIGNED).select_related("image__project"):
            _review_cancel(review=review, actor=user, reason="image reopened")
        if current.status in (RoundStatus.OPEN, RoundStatus.DISPUTED):
            current.status = RoundStatus.CANCELLED
            current.closed_at = timezone.now()
            current.save(update_fields=["status", "closed_at"])
    withdrawn, _ = Cell.objects.filter(image=image, layer=Layer.VERIFIED).delete()
    CorrectionRecord.objects.filter(image=image).delete()
    if withdrawn:
        audit_record(
            project=image.project,
            image=image,
            actor=user,
            action="verified.withdraw",
            before={"verified_cells": withdrawn},
        )
    _status_set(image=image, to=ImageStatus.ANNOTATING, actor=user, action="reopen")


def _adjudication_parse(
    *, image: Image, disputes: dict[int, Dispute], decisions: object
) -> list[tuple[Dispute, str, list[list[float]] | None, int | None]]:
    if not isinstance(decisions, list) or not decisions:
        raise ServiceValidationError("Nothing decided.", {"decisions": "must be a non-empty list"})
    classes = set(image.project.classes.values_list("pk", flat=True))
    errors: dict[str, str] = {}
    out: list[tuple[Dispute, str, list[list[float]] | None, int | None]] = []
    seen: set[int] = set()
    for index, item in enumerate(decisions):
        key = f"decisions.{index}"
        dispute_id = item.get("dispute_id") if isinstance(item, dict) else None
        dispute = disputes.get(dispute_id) if isinstance(dispute_id, int) else None
        if dispute is None or not isinstance(item, dict):
            errors[key] = "dispute_id is not a dispute of this image's current round"
            continue
        if dispute.pk in seen:
            errors[key] = f"dispute {dispute.pk} is decided twice"
            continue
        seen.add(dispute.pk)
        choice, raw_polygon, class_id = str(item.get("choice", "")), item.get("polygon"), item.get("class_id")
        if class_id is not None and class_id not in classes:
            errors[key] = f"class_id {class_id!r} is not a class of this project"
            continue
        polygon: list[list[float]] | None = None
        if raw_polygon is not None:
            try:
                polygon = polygon_clean(
                    raw_polygon, width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
                ).points
            except GeometryError as exc:
                errors[key] = str(exc)
                continue
        if choice == "reject":
            out.append((dispute, choice, None, None))
            continue
        if choice == "own":
            base_polygon, base_class = None, dispute.candidate_class_id
        elif choice == "annotation" and dispute.annotation:
            base_polygon, base_class = dispute.annotation["polygon"], dispute.annotation["class_id"]
        else:
            version = next(
                (v for v in dispute.versions if str(v["review_id"]) == choice and v["polygon"] is not None), None
            )
            if version is None:
                errors[key] = "choice must be the id of a review with a version of this cell, annotation, own or reject"
                continue
            base_polygon, base_class = version["polygon"], version["class_id"]
        final_polygon = polygon if polygon is not None else base_polygon
        if final_polygon is None:
            errors[key] = "choice own needs a polygon"
            continue
        out.append((dispute, choice, final_polygon, class_id if class_id is not None else base_class))
    if errors:
        raise ServiceValidationError("Some adjudication decisions are invalid; nothing was saved.", errors)
    return out


def adjudication_decide(*, image: Image, user: User, decisions: object) -> Image:
    """Decide disputed cells: keep one expert's version (``choice`` = review id), the annotator's
    cell (``annotation``), the adjudicator's own polygon (``own`` + ``polygon``) or ``reject``;
    ``polygon``/``class_id`` may refine a chosen version. Decisions may come in several calls
    (a decided dispute may be decided again until the image is verified); the image moves to
    adjudication on the first and is verified when no dispute is left open."""
    if not selectors.may_adjudicate(user=user, project=image.project):
        raise PermissionDenied("Only project admins and the project's adjudicators may adjudicate.")
    with transaction.atomic():
        locked = _image_lock(image)
        if locked.status not in (ImageStatus.DISPUTED, ImageStatus.ADJUDICATION):
            raise ConflictError(
                f"The image is {_status_label(locked.status)}; only disputed images are adjudicated.",
                {"status": locked.status},
            )
        current = selectors.round_current(image=locked)
        assert current is not None  # a disputed image has a round
        disputes = {d.pk: d for d in current.disputes.select_for_update()}
        parsed = _adjudication_parse(image=locked, disputes=disputes, decisions=decisions)
        if locked.status == ImageStatus.DISPUTED:
            _status_set(image=locked, to=ImageStatus.ADJUDICATION, actor=user, action="start_adjudication")
        now = timezone.now()
        for dispute, choice, polygon, class_id in parsed:
            before = {"status": dispute.status, "choice": dispute.choice}
            dispute.status = DisputeStatus.RESOLVED
            dispute.choice = choice
            dispute.polygon = polygon
            dispute.cell_class_id = class_id
            dispute.resolved_by = user
            dispute.resolved_at = now
            audit_record(
                project=locked.project,
                image=locked,
                actor=user,
                action="adjudication.decide",
                target=f"dispute {dispute.pk}",
                before=before,
                after={"choice": choice, "class_id": class_id, "polygon": polygon},
            )
        Dispute.objects.bulk_update(
            [p[0] for p in parsed], ["status", "choice", "polygon", "cell_class", "resolved_by", "resolved_at"]
        )
        if not any(d.status == DisputeStatus.OPEN for d in disputes.values()):
            _image_verify(image=locked, verification_round=current, actor=user)
    image.refresh_from_db()
    return image


VERIFICATION_EDITABLE = ("experts_required", "quorum", "match_iou", "adjudicators", "active_learning_order")


def verification_settings_update(*, project: Project, user: User, data: dict[str, Any]) -> VerificationSettings:
    """Update K, the quorum, the matching IoU (project fields), the adjudicators (experts or
    admins of the project; admins may always adjudicate) and the active-learning order.
    Rounds already started keep the rules they started with."""
    _require(user, project, "manage", "Only a project admin may change verification settings.")
    unknown = set(data) - set(VERIFICATION_EDITABLE)
    errors: dict[str, str] = {f: "cannot be changed here" for f in sorted(unknown)}
    order = data.get("active_learning_order")
    if "active_learning_order" in data and order not in ActiveLearningOrder.values:
        errors["active_learning_order"] = f"must be one of {', '.join(ActiveLearningOrder.values)}"
    adjudicators = data.get("adjudicators")
    if "adjudicators" in data:
        if not isinstance(adjudicators, list) or not all(
            isinstance(u, int) and not isinstance(u, bool) for u in adjudicators
        ):
            errors["adjudicators"] = "must be a list of user ids"
        else:
            eligible = set(
                project.memberships.filter(role__in=[Role.EXPERT, Role.ADMIN], user_id__in=adjudicators).values_list(
                    "user_id", flat=True
                )
            )
            missing = sorted(set(adjudicators) - eligible)
            if missing:
                errors["adjudicators"] = f"not experts or admins of this project: {missing}"
    if errors:
        raise ServiceValidationError("Invalid verification settings.", errors)
    with transaction.atomic():
        stored, _ = VerificationSettings.objects.get_or_create(project=project)
        before = {f: getattr(project, f) for f in ("experts_required", "quorum", "match_iou")} | {
            "adjudicators": selectors.adjudicator_ids(project=project),
            "active_learning_order": stored.active_learning_order,
        }
        project_fields: dict[str, Any] = {f: data[f] for f in ("experts_required", "quorum", "match_iou") if f in data}
        if project_fields:
            project_update(project=project, data=project_fields)
        if "active_learning_order" in data:
            stored.active_learning_order = str(order)
            stored.save(update_fields=["active_learning_order", "updated_at"])
        if "adjudicators" in data:
            stored.adjudicators.set(cast(list[int], adjudicators))
        audit_record(project=project, actor=user, action="verification.settings", before=before, after=data)
    return stored
