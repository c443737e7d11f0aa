"""Images: upload (decoded, never trusted by name; all or nothing), metadata and the data split, deletion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from annotations.models import (
    Bethesda,
    Image,
    Project,
    Split,
)
from annotations.services.audit import audit_record
from annotations.services.projects import DEFAULT_SPLIT_RATIOS
from annotations.services.slides import PreparedSlide, folder_delete, slide_prepare, slide_store
from annotations.signals import images_uploaded
from core.errors import ServiceValidationError
from cytoseg.imaging import DecodedImage, ImageRejected, encode_png, encode_thumbnail, image_decode


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
    prepared: list[_Prepared | PreparedSlide] = []
    seen: dict[str, str] = {}
    existing = dict(project.images.values_list("sha256", "file_name"))
    for index, upload in enumerate(files):
        name = (upload.name or f"upload-{index}").rsplit("/", 1)[-1][:255]
        # A large image or a slide (by its header) is stored as is and tiled by a worker.
        try:
            slide = slide_prepare(upload=upload, name=name)
        except ImageRejected as exc:
            errors[f"files.{index}"] = f"{name}: {exc}"
            continue
        if slide is not None:
            if slide.sha256 in existing or slide.sha256 in seen:
                where = "already in this project" if slide.sha256 in existing else "in this upload"
                other = existing.get(slide.sha256) or seen.get(slide.sha256)
                errors[f"files.{index}"] = f"{name}: duplicate of {other!r} {where}"
                continue
            seen[slide.sha256] = name
            prepared.append(slide)
            continue
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
        stored_files_delete(written)
        raise ServiceValidationError(
            "Upload rejected; nothing was stored.", {"files": "an identical image was stored concurrently"}
        ) from exc
    except BaseException:
        stored_files_delete(written)
        raise
    # The apps above react (the inference app pre-segments when the project asks for it).
    images_uploaded.send(sender=Image, project=project, images=images)
    return images


def stored_files_delete(paths: list[str]) -> None:
    """Remove stored files (of a write that did not commit, or of a deleted image)."""
    for path in paths:
        default_storage.delete(path)


def _image_store(
    *, project: Project, item: _Prepared | PreparedSlide, metadata: dict[str, Any], user: User, written: list[str]
) -> Image:
    if isinstance(item, PreparedSlide):
        return slide_store(
            prepared=item,
            folder=f"projects/{project.pk}/images/{item.sha256[:2]}/{item.sha256}",
            save_fields={
                "project": project,
                "file_name": item.name,
                "bethesda": metadata.get("bethesda") or "",
                "stain": str(metadata["stain"]) if metadata.get("stain") is not None else "Diff-Quik",
                "magnification": metadata.get("magnification") or "",
                "slide_code": metadata.get("slide_code") or "",
                "split": metadata.get("split") or split_for(project=project, sha256=item.sha256),
                "uploaded_by": user,
            },
            written=written,
        )
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
    tile_root = image.tile_root
    image.delete()
    transaction.on_commit(lambda: stored_files_delete(paths))
    if tile_root:
        transaction.on_commit(lambda: folder_delete(tile_root))
