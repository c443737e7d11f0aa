"""Projects, their members and roles, cell classes and model settings (``pipeline``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from annotations.models import (
    CellClass,
    Project,
    ProjectMembership,
    Role,
)
from annotations.signals import membership_changed
from core.errors import ConflictError, ServiceValidationError
from cytoseg.backends import backend_names, backend_settings_errors

DEFAULT_CLASSES: tuple[tuple[str, str, int], ...] = (
    ("thyroid cell", "#7b3fe4", 1),
    ("erythrocyte", "#e4572e", 2),
)


# Paper A's split of 272 images: 120 train, 30 validation, 122 test.
DEFAULT_SPLIT_RATIOS = {"train": 120 / 272, "validation": 30 / 272, "test": 122 / 272}


def pipeline_errors(pipeline: Any) -> dict[str, str]:
    """What is wrong with a project's ``pipeline`` settings, as ``{"pipeline.<path>": message}``.

    Keys are ``split_ratios`` and backend names; each backend's settings are checked against
    its schema (``cytoseg.backends``) with server paths refused: a path here would let a
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
    classes: Sequence[Mapping[str, Any]] | None = None,
) -> Project:
    """Create a project with its cell classes (``[{name, color?, model_label?}]``, in order;
    default: thyroid cell and erythrocyte); its creator becomes its admin. Bad classes are a
    400 naming ``classes.N.field``, and then nothing is created."""
    _validate_project_fields(
        {
            "name": name,
            "experts_required": experts_required,
            "quorum": quorum,
            "match_iou": match_iou,
            "pipeline": pipeline or {},
        }
    )
    wanted = _classes_checked(classes) if classes is not None else list(DEFAULT_CLASSES)
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
            for i, (n, c, label) in enumerate(wanted)
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
    membership_changed.send(sender=ProjectMembership, project=project, user=user)  # reviews it may no longer write
    return membership


def membership_remove(*, membership: ProjectMembership) -> None:
    project = membership.project
    if (
        membership.role == Role.ADMIN
        and not project.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk).exists()
    ):
        raise ConflictError("A project must keep at least one admin.")
    membership.delete()
    membership_changed.send(sender=ProjectMembership, project=project, user=membership.user)  # reassigned


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


# Colours given to classes created without one, in order (distinct on the editor's images).
CLASS_COLOURS = ("#7b3fe4", "#e4572e", "#2e86de", "#17a589", "#f1c40f", "#d35400", "#8e44ad", "#16a085")


def _classes_checked(classes: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, int]]:
    if not classes:
        raise ServiceValidationError("Invalid cell classes.", {"classes": "must list at least one class"})
    errors: dict[str, str] = {}
    out: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for i, entry in enumerate(classes):
        unknown = set(entry) - {"name", "color", "model_label"}
        problems = {f: "unknown field" for f in unknown} | _validate_class(
            {"name": entry.get("name", ""), **{k: v for k, v in entry.items() if k != "name"}}
        )
        name = str(entry.get("name") or "").strip()
        if name and name.casefold() in seen:
            problems["name"] = f"a class named {name!r} is listed twice"
        seen.add(name.casefold())
        errors.update({f"classes.{i}.{field}": message for field, message in problems.items()})
        color = entry.get("color") or CLASS_COLOURS[i % len(CLASS_COLOURS)]
        out.append((name, str(color), int(entry.get("model_label") or 1)))
    if errors:
        raise ServiceValidationError("Invalid cell classes.", errors)
    return out


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
