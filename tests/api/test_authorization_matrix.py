"""Authorisation of every API operation for every kind of caller, generated from the OpenAPI
schema against the explicit table below. An operation the table does not name fails the test,
so a new endpoint cannot skip it.

Each request runs in a transaction that is rolled back, so one caller's write (a deletion, a
state change) never changes what the next one finds. Outcomes: ``ok`` (got past authorisation:
any answer but 401, 403, 404 and 5xx; a body the test does not fill in is a 400), ``no``
(401, 403 or 404: refused, or not shown to exist). A 5xx fails whatever the table says.
``MATRIX_PRINT=1`` prints the observed table instead (to review a new endpoint).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from annotations.models import ApiToken, Cell, Image, Layer, ProjectMembership, Region, Role, TileStatus
from annotations.services import cells as cell_services
from annotations.services.slides import image_pyramid_build
from annotations.services.tokens import api_token_create
from interchange.models import ExportJob
from tests.factories import ProjectFactory, UserFactory, image_create, member, square
from training.models import TrainingJob
from training.services.registry import model_version_baseline
from training.snapshots import dataset_snapshot_create
from training.tests.factories import synthetic_project
from webhooks.models import WebhookSubscription

pytestmark = pytest.mark.django_db

PRINCIPALS = (
    "anonymous",
    "no_project",
    "other_admin",
    "other_token",
    "revoked_token",
    "expired_token",
    "annotator",
    "expert",
    "admin",
)

# Who may do what: the lowest caller that may, in this order of growing rights.
#   public: anyone; user: any signed-in caller (whatever project); annotator / expert / admin:
#   that role in the project (an admin may do what an expert may, an expert what an annotator
#   may, unless EXCEPTIONS says otherwise); tokens: managing one's API tokens (signed in or
#   with an unscoped token); superuser: a Django superuser only (none of these callers).
LEVELS = ("public", "user", "annotator", "expert", "admin", "superuser")
GRANTS: dict[str, tuple[str, ...]] = {
    "anonymous": ("public",),
    "revoked_token": ("public",),
    "expired_token": ("public",),
    "no_project": ("public", "user"),
    "other_admin": ("public", "user"),
    # a token scoped to another project acts for its user, but only on that project
    "other_token": ("public", "user"),  # not "tokens": a scoped token cannot mint an unscoped one
    "annotator": ("public", "user", "annotator"),
    "expert": ("public", "user", "annotator", "expert"),
    "admin": ("public", "user", "tokens", "annotator", "expert", "admin"),
}
for _signed_in in ("no_project", "other_admin", "annotator", "expert"):
    GRANTS[_signed_in] += ("tokens",)

TABLE: dict[str, str] = {
    "GET /api/v1/admin/queue": "superuser",  # staff (is_staff or superuser): none of these callers
    "POST /api/v1/auth/login": "public",
    "POST /api/v1/auth/logout": "user",
    "GET /api/v1/auth/me": "user",
    "GET /api/v1/auth/tokens": "tokens",
    "POST /api/v1/auth/tokens": "tokens",
    "DELETE /api/v1/auth/tokens/{token_id}": "admin",  # the token is the admin's own
    "GET /api/v1/images/{image_id}": "annotator",
    "PATCH /api/v1/images/{image_id}": "annotator",  # an annotator's fields; split etc. are the admin's
    "DELETE /api/v1/images/{image_id}": "admin",
    "GET /api/v1/images/{image_id}/adjudication": "admin",
    "POST /api/v1/images/{image_id}/adjudication": "admin",
    "GET /api/v1/images/{image_id}/agreement": "admin",
    "GET /api/v1/images/{image_id}/assignments": "annotator",  # who reviews, never their decisions
    "POST /api/v1/images/{image_id}/assignments": "admin",
    "DELETE /api/v1/images/{image_id}/assignments/{review_id}": "admin",
    "GET /api/v1/images/{image_id}/cells": "annotator",
    "PUT /api/v1/images/{image_id}/cells": "annotator",
    "PATCH /api/v1/images/{image_id}/cells": "annotator",  # a delta save, like PUT cells
    "GET /api/v1/images/{image_id}/file": "annotator",
    "GET /api/v1/images/{image_id}/history": "annotator",
    "GET /api/v1/images/{image_id}/history/{revision}": "annotator",
    "POST /api/v1/images/{image_id}/history/{revision}/restore": "annotator",
    "POST /api/v1/images/{image_id}/import/geojson": "annotator",  # a cell write, like PUT cells
    "POST /api/v1/images/{image_id}/presegment": "annotator",
    "POST /api/v1/images/{image_id}/segment/click": "annotator",
    "POST /api/v1/images/{image_id}/segment/box": "annotator",
    "GET /api/v1/images/{image_id}/tiles/{level}/{tile}": "annotator",  # every member reads the pixels
    "GET /api/v1/images/{image_id}/regions": "annotator",
    "POST /api/v1/images/{image_id}/regions": "annotator",
    "GET /api/v1/images/{image_id}/regions/{region_id}": "annotator",
    "PATCH /api/v1/images/{image_id}/regions/{region_id}": "annotator",
    "DELETE /api/v1/images/{image_id}/regions/{region_id}": "annotator",
    "POST /api/v1/images/{image_id}/proposals/accept": "annotator",
    "POST /api/v1/images/{image_id}/proposals/reject": "annotator",
    # a slide's region in review on its own round (issue #14): as the image's review endpoints
    "GET /api/v1/images/{image_id}/regions/{region_id}/transition": "annotator",
    "POST /api/v1/images/{image_id}/regions/{region_id}/transition": "annotator",
    "GET /api/v1/images/{image_id}/regions/{region_id}/assignments": "annotator",
    "POST /api/v1/images/{image_id}/regions/{region_id}/assignments": "admin",
    "GET /api/v1/images/{image_id}/regions/{region_id}/reviews": "admin",
    "GET /api/v1/images/{image_id}/regions/{region_id}/reviews/mine": "expert",
    "PUT /api/v1/images/{image_id}/regions/{region_id}/reviews/mine": "expert",
    "POST /api/v1/images/{image_id}/regions/{region_id}/reviews/mine/submit": "expert",
    "GET /api/v1/images/{image_id}/regions/{region_id}/adjudication": "admin",
    "POST /api/v1/images/{image_id}/regions/{region_id}/adjudication": "admin",
    "GET /api/v1/images/{image_id}/reviews": "admin",
    "GET /api/v1/images/{image_id}/reviews/mine": "expert",
    "PUT /api/v1/images/{image_id}/reviews/mine": "expert",
    "POST /api/v1/images/{image_id}/reviews/mine/submit": "expert",
    "GET /api/v1/images/{image_id}/transition": "annotator",
    "POST /api/v1/images/{image_id}/transition": "annotator",
    "GET /api/v1/me/queue": "user",
    "GET /api/v1/projects": "user",
    "POST /api/v1/projects": "superuser",
    "GET /api/v1/projects/{project_id}": "annotator",
    "PATCH /api/v1/projects/{project_id}": "admin",
    "DELETE /api/v1/projects/{project_id}": "admin",
    "GET /api/v1/projects/{project_id}/agreement": "admin",
    "GET /api/v1/projects/{project_id}/audit": "admin",
    "GET /api/v1/projects/{project_id}/classes": "annotator",
    "POST /api/v1/projects/{project_id}/classes": "admin",
    "PATCH /api/v1/projects/{project_id}/classes/{class_id}": "admin",
    "DELETE /api/v1/projects/{project_id}/classes/{class_id}": "admin",
    "GET /api/v1/projects/{project_id}/corrections": "annotator",  # per model version, not per person
    "GET /api/v1/projects/{project_id}/export/cellpose": "annotator",
    "GET /api/v1/projects/{project_id}/export/coco": "annotator",
    "GET /api/v1/projects/{project_id}/export/coco-zip": "annotator",
    "GET /api/v1/projects/{project_id}/export/geojson": "annotator",
    "GET /api/v1/projects/{project_id}/export/jobs": "annotator",
    "GET /api/v1/projects/{project_id}/export/jobs/{job_id}": "annotator",
    "GET /api/v1/projects/{project_id}/export/jobs/{job_id}/download": "annotator",
    "GET /api/v1/projects/{project_id}/export/nnunet": "annotator",
    "GET /api/v1/projects/{project_id}/images": "annotator",
    "POST /api/v1/projects/{project_id}/images": "admin",
    "POST /api/v1/projects/{project_id}/import/coco": "admin",
    "GET /api/v1/projects/{project_id}/members": "annotator",
    "POST /api/v1/projects/{project_id}/members": "admin",
    "PATCH /api/v1/projects/{project_id}/members/{membership_id}": "admin",
    "DELETE /api/v1/projects/{project_id}/members/{membership_id}": "admin",
    "GET /api/v1/projects/{project_id}/models": "annotator",
    "POST /api/v1/projects/{project_id}/models": "admin",
    "POST /api/v1/projects/{project_id}/presegment": "admin",
    "POST /api/v1/projects/{project_id}/training/completion": "admin",
    "GET /api/v1/projects/{project_id}/training/jobs": "annotator",
    "POST /api/v1/projects/{project_id}/training/jobs": "admin",
    "GET /api/v1/projects/{project_id}/training/models": "annotator",
    "POST /api/v1/projects/{project_id}/training/rollback": "admin",
    "GET /api/v1/projects/{project_id}/training/schedule": "annotator",
    "PUT /api/v1/projects/{project_id}/training/schedule": "admin",
    "PATCH /api/v1/projects/{project_id}/training/schedule": "admin",
    "GET /api/v1/projects/{project_id}/training/snapshots": "annotator",
    "POST /api/v1/projects/{project_id}/training/snapshots": "admin",
    "GET /api/v1/projects/{project_id}/verification": "annotator",
    "PATCH /api/v1/projects/{project_id}/verification": "admin",
    "GET /api/v1/projects/{project_id}/webhooks": "admin",
    "POST /api/v1/projects/{project_id}/webhooks": "admin",
    "GET /api/v1/training/jobs/{job_id}": "annotator",
    "POST /api/v1/training/jobs/{job_id}/cancel": "admin",
    "GET /api/v1/training/models/{version_id}": "annotator",
    "POST /api/v1/training/models/{version_id}/evaluate": "admin",
    "GET /api/v1/training/models/{version_id}/gate": "admin",
    "POST /api/v1/training/models/{version_id}/promote": "admin",
    "GET /api/v1/training/snapshots/{snapshot_id}": "annotator",
    "GET /api/v1/training/snapshots/{snapshot_id}/download/{layout}": "admin",
    "GET /api/v1/webhooks/{webhook_id}": "admin",
    "PATCH /api/v1/webhooks/{webhook_id}": "admin",
    "DELETE /api/v1/webhooks/{webhook_id}": "admin",
    "GET /api/v1/webhooks/{webhook_id}/deliveries": "admin",
    "POST /api/v1/webhooks/{webhook_id}/ping": "admin",
}

# Where a caller's outcome is not the level rule's.
EXCEPTIONS: dict[str, dict[str, str]] = {
    # only the reviewer assigned to the image has a review of it (the expert here; not the admin)
    "GET /api/v1/images/{image_id}/reviews/mine": {"admin": "no"},
    "PUT /api/v1/images/{image_id}/reviews/mine": {"admin": "no"},
    "POST /api/v1/images/{image_id}/reviews/mine/submit": {"admin": "no"},
    "GET /api/v1/images/{image_id}/regions/{region_id}/reviews/mine": {"admin": "no"},
    "PUT /api/v1/images/{image_id}/regions/{region_id}/reviews/mine": {"admin": "no"},
    "POST /api/v1/images/{image_id}/regions/{region_id}/reviews/mine/submit": {"admin": "no"},
}


@dataclass
class World:
    clients: dict[str, APIClient]
    params: dict[str, Any]


def _client(user: Any = None, token: str | None = None) -> APIClient:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    elif user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def world() -> World:
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    project, admin = sp.project, sp.admin
    annotator = member(project, Role.ANNOTATOR)
    expert = member(project, Role.EXPERT)
    other = ProjectFactory()
    other_admin = other.memberships.get(role=Role.ADMIN).user
    ProjectMembership.objects.create(project=other, user=admin, role=Role.ADMIN)
    image = image_create(project, width=64, height=48)
    Image.objects.filter(pk=image.pk).update(annotator=annotator)
    cell_class = project.classes.get(model_label=1)
    cell_services.cells_replace(
        image=image, user=annotator, base_revision=0, cells=[{"class_id": cell_class.pk, "polygon": square(5, 5)}]
    )
    _, other_raw = api_token_create(user=admin, name="other", project=other)
    revoked, revoked_raw = api_token_create(user=admin, name="revoked")
    ApiToken.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    expired, expired_raw = api_token_create(user=admin, name="expired", expires_in_days=1)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    own, _ = api_token_create(user=admin, name="own")
    version = model_version_baseline(project=project)
    snapshot = dataset_snapshot_create(project=project, user=admin)
    job = TrainingJob.objects.create(project=project, kind="cellpose", snapshot=snapshot, created_by=admin)
    export = ExportJob.objects.create(project=project, kind="coco", params={"kind": "coco"}, created_by=admin)
    webhook = WebhookSubscription.objects.create(
        project=project, url="https://hooks.example.com/in", events=["model.promoted"], secret="whsec_x"
    )
    review = _review_assignment(image, annotator, expert, admin)
    region = Region.objects.create(
        image=image, name="ROI", polygon=[[0, 0], [30, 0], [0, 30]], bbox_x=0, bbox_y=0, bbox_w=30, bbox_h=30
    )
    # a tiled image with a real (small) pyramid, so that the tile endpoint has a tile to serve
    slide = image_create(project, width=80, height=60)
    Image.objects.filter(pk=slide.pk).update(tiled=True, tile_status=TileStatus.QUEUED)
    assert "levels" in image_pyramid_build(image_id=slide.pk)
    slide_region = _region_in_review(slide, annotator, expert, admin, cell_class.pk)
    clients = {
        "anonymous": _client(),
        "no_project": _client(UserFactory()),
        "other_admin": _client(other_admin),
        "other_token": _client(token=other_raw),
        "revoked_token": _client(token=revoked_raw),
        "expired_token": _client(token=expired_raw),
        "annotator": _client(annotator),
        "expert": _client(expert),
        "admin": _client(admin),
    }
    params = {
        "project_id": project.pk,
        "image_id": image.pk,
        "class_id": cell_class.pk,
        "membership_id": project.memberships.get(user=annotator).pk,
        "token_id": own.pk,
        "review_id": review,
        "revision": 1,
        "job_id": None,  # per path: training or export job
        "training_job_id": job.pk,
        "export_job_id": export.pk,
        "version_id": version.pk,
        "snapshot_id": snapshot.pk,
        "layout": "nnunet",
        "webhook_id": webhook.pk,
        "region_id": region.pk,
        "slide_id": slide.pk,
        "slide_region_id": slide_region,
        "level": 0,
        "tile": "0_0.jpeg",
    }
    assert Cell.objects.filter(image=image, layer=Layer.ANNOTATION).exists()
    return World(clients, params)


def _review_assignment(image: Image, annotator: Any, expert: Any, admin: Any) -> int:
    """The expert's review of the image: submitted by its annotator, assigned by the workflow
    (or by the admin when the workflow left the slot open)."""
    from review.models import Review
    from review.services.workflow import review_assign
    from review.tests.support import fresh, submit

    submit(image, annotator)
    review = Review.objects.filter(image=image, reviewer=expert).first()
    if review is None:
        review = review_assign(image=fresh(image), actor=admin, reviewer=expert)
    return int(review.pk)


def _region_in_review(slide: Image, annotator: Any, expert: Any, admin: Any, class_id: int) -> int:
    """A region of the slide with one cell, submitted for verification: the expert reviews it."""
    from review.models import Review
    from review.services.workflow import region_transition, review_assign

    cell_services.cells_replace(
        image=slide, user=annotator, base_revision=0, cells=[{"class_id": class_id, "polygon": square(5, 5)}]
    )
    slide.refresh_from_db()
    region = Region.objects.create(
        image=slide, name="ROI", polygon=[[0, 0], [40, 0], [0, 40]], bbox_x=0, bbox_y=0, bbox_w=40, bbox_h=40
    )
    region_transition(region=region, user=annotator, action="submit")
    if not Review.objects.filter(round__region=region, reviewer=expert).exists():
        review_assign(image=slide, actor=admin, reviewer=expert, region=region)
    return int(region.pk)


# The review endpoints of a region act on a slide's region (``slide_region_id`` on ``slide_id``).
_REGION_REVIEW = re.compile(r"/regions/\{region_id\}/(transition|assignments|reviews|adjudication)")


def _operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _url(method: str, path: str, params: dict[str, Any]) -> str:
    region_review = _REGION_REVIEW.search(path) is not None

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "image_id" and ("/tiles/" in path or region_review):
            name = "slide_id"
        if name == "region_id" and region_review:
            name = "slide_region_id"
        if name == "job_id":
            name = "training_job_id" if path.startswith("/api/v1/training/") else "export_job_id"
        return str(params[name])

    return re.sub(r"\{(\w+)\}", fill, path)


def _outcome(status: int) -> str:
    if status >= 500:
        return f"error {status}"
    return "no" if status in (401, 403, 404) else "ok"


def _expected(operation: str, principal: str) -> str:
    special = EXCEPTIONS.get(operation, {})
    if principal in special:
        return special[principal]
    return "ok" if TABLE[operation] in GRANTS[principal] else "no"


def test_every_operation_is_in_the_table() -> None:
    operations = {f"{m} {p}" for m, p in _operations()}
    assert sorted(operations - set(TABLE)) == [], "add the new operations to TABLE"
    assert sorted(set(TABLE) - operations) == [], "operations in TABLE the API no longer has"


def test_authorisation_matrix(world: World) -> None:
    observed: dict[str, dict[str, str]] = {}
    for method, path in _operations():
        url = _url(method, path, world.params)
        row = observed.setdefault(f"{method} {path}", {})
        for principal in PRINCIPALS:
            client = world.clients[principal]
            with transaction.atomic():
                response = client.generic(method, url, "{}", content_type="application/json")
                transaction.set_rollback(True)
            row[principal] = f"{_outcome(response.status_code)} ({response.status_code})"
    if os.environ.get("MATRIX_PRINT"):
        for operation, row in observed.items():
            print(operation.ljust(72), " ".join(f"{p}={row[p]}" for p in PRINCIPALS))
    wrong = [
        f"{operation}: {principal} got {got}, expected {_expected(operation, principal)}"
        for operation, row in observed.items()
        for principal, got in row.items()
        if got.split(" (")[0] != _expected(operation, principal)
    ]
    assert wrong == [], "\n".join(wrong)
