"""``core.events``: sent once the transaction commits, never for a rolled-back one, robust to a
failing receiver; and each service that webhooks rely on emits its event with its ids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from annotations.models import Image, PresegmentStatus, Role
from core.events import EVENTS, event_emit, event_emitted
from interchange.models import ExportJob
from interchange.services.jobs import export_job_run
from review.tests.support import drive_to
from tests.factories import image_create, member, model_version_files
from training.models import JobStatus, TrainingJob
from training.services import jobs, registry
from training.snapshots import dataset_snapshot_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def heard() -> Iterator[list[dict[str, Any]]]:
    """The events sent while the test runs (once the commit callbacks run)."""
    events: list[dict[str, Any]] = []

    def listen(**kwargs: Any) -> None:
        events.append({k: kwargs[k] for k in ("project_id", "event", "data")})

    event_emitted.connect(listen, dispatch_uid="tests.heard", weak=False)
    try:
        yield events
    finally:
        event_emitted.disconnect(dispatch_uid="tests.heard")


def test_sent_after_commit_only(project: Any, django_capture_on_commit_callbacks: Any) -> None:
    events: list[str] = []
    event_emitted.connect(lambda **kw: events.append(kw["event"]), dispatch_uid="tests.commit", weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            with transaction.atomic():
                event_emit(project_id=project.pk, event="export.ready", data={"job": 1})
            assert events == []  # not before the commit
        with django_capture_on_commit_callbacks(execute=True):
            with pytest.raises(RuntimeError), transaction.atomic():
                event_emit(project_id=project.pk, event="export.ready", data={"job": 2})
                raise RuntimeError
        assert events == []  # rolled back: never
        for callback in callbacks:
            callback()
        assert events == ["export.ready"]
    finally:
        event_emitted.disconnect(dispatch_uid="tests.commit")


def test_unknown_events_are_a_programming_error(project: Any) -> None:
    with pytest.raises(ValueError, match="Unknown event"):
        event_emit(project_id=project.pk, event="image.submited", data={})
    assert "ping" not in EVENTS  # only ever sent on request, by the webhooks app


def test_a_failing_receiver_never_reaches_the_emitter(
    project: Any, heard: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("receiver bug")

    event_emitted.connect(broken, dispatch_uid="tests.broken", weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            event_emit(project_id=project.pk, event="export.ready", data={"job": 1})
    finally:
        event_emitted.disconnect(dispatch_uid="tests.broken")
    assert [e["event"] for e in heard] == ["export.ready"]


def test_the_review_workflow_emits_submitted_verified_and_disputed(
    project: Any, admin_user: Any, heard: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    annotator = member(project, Role.ANNOTATOR)
    member(project, Role.EXPERT)
    member(project, Role.EXPERT)
    class_id = project.classes.get(model_label=1).pk
    calm, quarrel = image_create(project, seed=1), image_create(project, seed=2)
    with django_capture_on_commit_callbacks(execute=True):
        drive_to("verified", image=calm, annotator=annotator, admin=admin_user, class_id=class_id)
        drive_to("disputed", image=quarrel, annotator=annotator, admin=admin_user, class_id=class_id)
    events = heard
    seen = [(e["event"], e["data"]["image"]) for e in events]
    assert seen == [
        ("image.submitted", calm.pk),
        ("image.verified", calm.pk),
        ("image.submitted", quarrel.pk),
        ("dispute.opened", quarrel.pk),
    ]
    assert {e["project_id"] for e in events} == {project.pk}
    assert events[0]["data"] == {"image": calm.pk, "round": 1, "submitted_by": annotator.pk}
    assert events[1]["data"] == {"image": calm.pk, "round": 1, "verified_cells": 2}
    assert events[3]["data"] == {"image": quarrel.pk, "round": 1, "disputes": 1}


def test_the_registry_emits_promoted_and_rolled_back(
    project: Any, admin_user: Any, heard: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    first = model_version_files(project, "cellpose", {"weights.bin": b"w1"})
    second = model_version_files(project, "cellpose", {"weights.bin": b"w2"})
    with django_capture_on_commit_callbacks(execute=True):
        registry.model_version_promote(version=first, user=admin_user)
        registry.model_version_promote(version=second, user=admin_user)
        registry.model_version_promote(version=second, user=admin_user)  # already active: no event
        registry.model_version_rollback(project=project, kind="cellpose", user=admin_user)
    assert [(e["event"], e["data"]) for e in heard] == [
        ("model.promoted", {"model_version": first.pk, "kind": "cellpose", "number": 1, "replaced": None}),
        ("model.promoted", {"model_version": second.pk, "kind": "cellpose", "number": 2, "replaced": first.pk}),
        ("model.rolled_back", {"kind": "cellpose", "retired": second.pk, "active": first.pk}),
    ]


def test_a_failed_training_job_and_a_finished_export_emit(
    project: Any, admin_user: Any, heard: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    from training.tests.factories import synthetic_project

    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1)
    snapshot = dataset_snapshot_create(project=sp.project, user=sp.admin)
    job = TrainingJob.objects.create(
        project=sp.project, kind="cellpose", snapshot=snapshot, created_by=sp.admin, status=JobStatus.RUNNING
    )
    export = ExportJob.objects.create(project=project, kind="coco", params={"kind": "coco"}, created_by=admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.job_fail(job.pk, "the worker was lost")
        assert not jobs.job_fail(job.pk, "again")  # failed already: no second event
        export_job_run(job_id=export.pk)
    assert [(e["event"], e["project_id"]) for e in heard] == [
        ("training.failed", sp.project.pk),
        ("export.ready", project.pk),
    ]
    assert heard[0]["data"] == {"job": job.pk, "kind": "cellpose", "error": "the worker was lost"}
    assert heard[1]["data"]["job"] == export.pk and heard[1]["data"]["size_bytes"] > 0


def test_a_pre_segmentation_given_up_emits(
    project: Any, heard: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    from inference.services import presegment_reap
    from training.services.registry import model_version_baseline

    image = image_create(project)
    version = model_version_baseline(project=project)
    Image.objects.filter(pk=image.pk).update(
        presegment_status=PresegmentStatus.RUNNING,
        presegment_attempts=3,
        presegment_heartbeat_at=None,
        presegment_model=version,
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert presegment_reap()["failed"] == [image.pk]
    (event,) = heard
    assert event["event"] == "presegment.failed" and event["project_id"] == project.pk
    assert event["data"]["image"] == image.pk and event["data"]["model_version"] == version.pk
    assert "gave up" not in event["data"]["error"] and "heartbeat" in event["data"]["error"]
