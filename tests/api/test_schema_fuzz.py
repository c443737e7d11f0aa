"""Property-based fuzzing of every operation from the OpenAPI schema (Schemathesis), against the
live test server with an admin's API token. Required: no 5xx, and what comes back conforms to
the schema (content type and, for a documented status, the body). Bounded to fit CI:
``FUZZ_EXAMPLES`` examples per operation (default 4)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from annotations.models import Role
from annotations.services.tokens import api_token_create
from interchange.models import ExportJob
from tests.factories import image_create, member
from training.models import TrainingJob
from training.services.registry import model_version_baseline
from training.snapshots import dataset_snapshot_create
from training.tests.factories import synthetic_project
from webhooks.models import WebhookSubscription

pytestmark = [pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))


@dataclass
class World:
    admin: Any
    ids: dict[str, int]  # path parameter -> the id of a real object of the admin's project


@pytest.fixture
def fuzz_world(live_server: Any) -> World:
    """An admin of a project with images, cells, members, a snapshot, a job, a model version
    and an export job; the path parameters the fuzzer fills in name these objects (random ids
    would only ever reach "not found")."""
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    annotator = member(sp.project, Role.ANNOTATOR)
    member(sp.project, Role.EXPERT)
    image = image_create(sp.project, width=64, height=48)
    snapshot = dataset_snapshot_create(project=sp.project, user=sp.admin)
    job = TrainingJob.objects.create(project=sp.project, kind="cellpose", snapshot=snapshot, created_by=sp.admin)
    export = ExportJob.objects.create(project=sp.project, kind="coco", params={"kind": "coco"}, created_by=sp.admin)
    webhook = WebhookSubscription.objects.create(
        project=sp.project, url="https://hooks.example.com/in", events=["model.promoted"], secret="whsec_x"
    )
    ids = {
        "project_id": sp.project.pk,
        "image_id": image.pk,
        "class_id": sp.project.classes.get(model_label=1).pk,
        "membership_id": sp.project.memberships.get(user=annotator).pk,
        "snapshot_id": snapshot.pk,
        "version_id": model_version_baseline(project=sp.project).pk,
        "training_job_id": job.pk,
        "export_job_id": export.pk,
        "webhook_id": webhook.pk,
    }
    return World(sp.admin, ids)


def _real_ids(case: Any, ids: dict[str, int]) -> None:
    """Point the case's path at the world's objects (the rest of the request stays generated)."""
    params = case.path_parameters or {}
    for name in params:
        key = name
        if name == "job_id":
            key = "training_job_id" if case.path.startswith("/api/v1/training/") else "export_job_id"
        if key in ids:
            params[name] = ids[key]


def test_no_server_error_and_answers_conform(live_server: Any, fuzz_world: World) -> None:
    """Each operation in turn, ``EXAMPLES`` generated requests each; every failure is collected
    and reported together (operation, the check that failed, how to reproduce it)."""
    fuzz_admin = fuzz_world.admin
    headers = {"Authorization": f"Bearer {api_token_create(user=fuzz_admin, name='schema')[1]}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/schema?format=json", headers=headers)
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    # deletions last, so that the others still find the project and its images
    ordered = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: op.method.upper() == "DELETE")
    for operation in ordered:
        operations += 1
        # a fresh token each time: the fuzzed DELETE auth/tokens/{id} may revoke the last one
        token = api_token_create(user=fuzz_admin, name=operation.label[:90])[1]
        try:
            _fuzz(operation, live_server.url, {"Authorization": f"Bearer {token}"}, statuses, fuzz_world.ids)
        except (Exception, BaseExceptionGroup) as exc:  # a check failed: go on, report all at the end
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 70
    print("fuzzing statuses:", dict(sorted(statuses.items())))
    # the token worked: most requests got past authentication, many were answered 2xx
    assert statuses[401] < sum(statuses.values()) / 10 and sum(v for k, v in statuses.items() if k < 300) >= 50
    assert failures == [], "\n\n".join(failures)


def _fuzz(operation: Any, base_url: str, headers: dict[str, str], statuses: Counter[int], ids: dict[str, int]) -> None:
    """``EXAMPLES`` generated requests of one operation, every check applied to each answer."""

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        _real_ids(case, ids)
        response = case.call_and_validate(
            base_url=base_url,
            headers=headers,
            checks=[not_a_server_error, content_type_conformance, response_schema_conformance],
            timeout=60,
        )
        statuses[response.status_code] += 1

    run()
