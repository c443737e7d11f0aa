"""The move of the verification models to ``review`` (and ExportJob to ``interchange``,
IdempotencyRecord to ``core``) keeps every row: data written with the models of the old state
(annotations 0007, before the move) reads back through the new apps' models after migrating
forward, and the content types of the moved models belong to the new apps.

The test migrates the test database back and forth, so it runs on a transactional database and
always migrates it forward to the latest state again, even when it fails."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps as registry
from django.apps.registry import Apps
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from annotations.models import Cell, CellClass, Image, Project
from core.models import IdempotencyRecord
from review.models import (
    CorrectionRecord,
    Dispute,
    PairAgreement,
    Review,
    ReviewComment,
    ReviewDecision,
    VerificationRound,
    VerificationSettings,
)
from training.models import ModelVersion

# The interchange app sits beside review (the import contract keeps them independent): its model
# is read from the app registry.
ExportJob = registry.get_model("interchange", "ExportJob")

BEFORE_MOVE = ("annotations", "0007_pipeline_paths_removed")
# Unapplying core's first migration also unapplies everything that depends on it: annotations
# 0008 (the move) and the first migrations of review and interchange.
MOVED_APPS = ("core", "review", "interchange")
MOVED = {
    "review": [
        "verificationsettings",
        "verificationround",
        "review",
        "reviewdecision",
        "reviewcomment",
        "dispute",
        "pairagreement",
        "correctionrecord",
    ],
    "interchange": ["exportjob"],
    "core": ["idempotencyrecord"],
}
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def _latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    ContentType.objects.clear_cache()
    # Every migration is applied again.
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []


@pytest.fixture
def old_apps(transactional_db: Any) -> Iterator[Apps]:
    """The database migrated back to before the move; the historical models of that state."""
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([BEFORE_MOVE, ("core", None)])
        executor.loader.build_graph()
        applied = executor.loader.applied_migrations
        assert not any(app in MOVED_APPS for app, _ in applied)
        assert ("annotations", "0008_models_moved_to_core_review_interchange") not in applied
        # every applied migration, not only applied leaves: an app whose latest migration depends
        # on a later annotations migration (training's snapshot regions) is left part-applied
        done = [node for node in executor.loader.graph.nodes if node in applied]
        yield executor.loader.project_state([*done, BEFORE_MOVE]).apps
    finally:
        _latest()


def _old_rows(apps: Apps) -> dict[str, Any]:
    """One row of every moved model (and what they point at), written with the old models."""
    User = apps.get_model("auth", "User")
    ContentTypeOld = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")

    def get(name: str) -> Any:
        return apps.get_model("annotations", name)

    admin, annotator, a, b, judge = (
        User.objects.create(username=n) for n in ("m-admin", "m-ann", "m-a", "m-b", "m-judge")
    )
    project = get("Project").objects.create(name="Moved", created_by=admin, experts_required=2, quorum=2, match_iou=0.6)
    cell_class = get("CellClass").objects.create(project=project, name="thyroid cell", color="#7b3fe4")
    version = apps.get_model("training", "ModelVersion").objects.create(project=project, kind="watershed", number=1)
    image = get("Image").objects.create(
        project=project,
        file_name="moved.png",
        sha256="0" * 64,
        original="originals/moved.png",
        display="display/moved.png",
        thumbnail="thumbs/moved.png",
        original_format="PNG",
        original_mode="RGB",
        size_bytes=123,
        width=64,
        height=48,
        split="train",
        status="verified",
        revision=3,
        annotator=annotator,
        presegment_model=version,
    )
    polygon = [[4.0, 4.0], [16.0, 4.0], [16.0, 16.0], [4.0, 16.0]]
    geometry = {"polygon": polygon, "bbox_x": 4.0, "bbox_y": 4.0, "bbox_w": 12.0, "bbox_h": 12.0, "area": 144.0}
    cell = get("Cell").objects.create(
        image=image, layer="annotation", cell_class=cell_class, author=annotator, **geometry
    )
    proposal = get("Cell").objects.create(
        image=image,
        layer="proposal",
        cell_class=cell_class,
        source="model",
        model_version=version,
        score=0.8,
        **geometry,
    )
    gold = get("Cell").objects.create(
        image=image, layer="verified", cell_class=cell_class, source="consensus", **geometry
    )
    settings = get("VerificationSettings").objects.create(project=project, active_learning_order="uncertainty")
    settings.adjudicators.add(judge)
    rnd = get("VerificationRound").objects.create(
        image=image,
        number=1,
        status="closed",
        experts_required=2,
        quorum=2,
        match_iou=0.6,
        base_revision=3,
        agreed=[{"origin_cell_id": cell.pk, "fusion": "accepted"}],
        summary={"reviews": 2, "verified": 1},
        started_by=annotator,
        closed_at=WHEN,
    )
    review_a = get("Review").objects.create(
        round=rnd, image=image, reviewer=a, status="submitted", submitted_at=WHEN, n_accept=1, consensus_f1=1.0
    )
    review_b = get("Review").objects.create(
        round=rnd,
        image=image,
        reviewer=b,
        status="submitted",
        manual=True,
        assigned_by=admin,
        submitted_at=WHEN,
        n_edit=1,
        consensus_f1=0.5,
        consensus_mean_iou=0.75,
        consensus_dice=0.8,
    )
    decision = get("ReviewDecision").objects.create(
        review=review_b, cell=cell, decision="edit", cell_class=cell_class, polygon=[*polygon[:3], [4.0, 14.0]]
    )
    comment = get("ReviewComment").objects.create(review=review_b, cell=cell, text="a little smaller")
    dispute = get("Dispute").objects.create(
        round=rnd,
        image=image,
        reason="class",
        origin_cell=cell,
        annotation={"polygon": polygon, "class_id": cell_class.pk},
        versions=[{"review_id": review_a.pk, "reviewer_id": a.pk, "decision": "accept"}],
        candidate=polygon,
        candidate_class_id=cell_class.pk,
        status="resolved",
        choice=str(review_a.pk),
        polygon=polygon,
        cell_class=cell_class,
        resolved_by=judge,
        resolved_at=WHEN,
    )
    pair = get("PairAgreement").objects.create(
        round=rnd,
        image=image,
        review_a=review_a,
        review_b=review_b,
        reviewer_a=a,
        reviewer_b=b,
        f1=1.0,
        mean_iou=0.75,
        dice=0.8,
        matched=1,
        n_a=1,
        n_b=1,
    )
    record = get("CorrectionRecord").objects.create(
        image=image, round=rnd, model_version=version, proposal=proposal, verified_cell=gold, kind="edited", iou=0.75
    )
    export = get("ExportJob").objects.create(
        project=project,
        created_by=admin,
        kind="coco",
        params={"layer": "verified"},
        status="done",
        items_total=1,
        items_done=1,
        file="exports/moved.json",
        file_name="moved.json",
        content_type="application/json",
        size_bytes=42,
        finished_at=WHEN,
    )
    idempotency = get("IdempotencyRecord").objects.create(
        user=admin, key="key-1", scope="adjudication:1", request_hash="f" * 64, status_code=200, response={"ok": True}
    )
    # Content types of the old state (the test database's, renamed back by the reverse
    # migrations, or new ones) with a permission each, as the admin and auth apps leave them.
    content_types = {}
    for app, models in MOVED.items():
        for model in models:
            ct, _ = ContentTypeOld.objects.get_or_create(app_label="annotations", model=model)
            Permission.objects.get_or_create(
                content_type=ct, codename=f"audit_{model}", defaults={"name": f"Can audit {model}"}
            )
            content_types[app, model] = ct.pk
    return {
        "users": {"admin": admin.pk, "annotator": annotator.pk, "a": a.pk, "b": b.pk, "judge": judge.pk},
        "project": project.pk,
        "class": cell_class.pk,
        "version": version.pk,
        "image": image.pk,
        "cell": cell.pk,
        "proposal": proposal.pk,
        "gold": gold.pk,
        "settings": settings.pk,
        "round": rnd.pk,
        "review_a": review_a.pk,
        "review_b": review_b.pk,
        "decision": decision.pk,
        "comment": comment.pk,
        "dispute": dispute.pk,
        "pair": pair.pk,
        "record": record.pk,
        "export": export.pk,
        "idempotency": idempotency.pk,
        "content_types": content_types,
        "polygon": polygon,
    }


@pytest.mark.django_db(transaction=True)
def test_moved_models_keep_their_rows_and_content_types(old_apps: Apps) -> None:
    old = _old_rows(old_apps)
    _latest()
    users = old["users"]
    polygon = old["polygon"]

    image = Image.objects.get(pk=old["image"])
    assert image.project_id == old["project"] and image.annotator_id == users["annotator"]
    project = Project.objects.get(pk=old["project"])
    cell = Cell.objects.get(pk=old["cell"])

    settings = VerificationSettings.objects.get(pk=old["settings"])
    assert settings.project_id == project.pk and settings.active_learning_order == "uncertainty"
    assert list(settings.adjudicators.values_list("pk", flat=True)) == [users["judge"]]
    assert project.verification_settings.pk == settings.pk

    rnd = VerificationRound.objects.get(pk=old["round"])
    assert (rnd.image_id, rnd.number, rnd.status, rnd.experts_required, rnd.quorum, rnd.match_iou) == (
        image.pk,
        1,
        "closed",
        2,
        2,
        0.6,
    )
    assert (rnd.base_revision, rnd.started_by_id, rnd.closed_at) == (3, users["annotator"], WHEN)
    assert rnd.agreed == [{"origin_cell_id": cell.pk, "fusion": "accepted"}]
    assert rnd.summary == {"reviews": 2, "verified": 1}
    assert list(image.verification_rounds.values_list("pk", flat=True)) == [rnd.pk]

    review_a, review_b = Review.objects.get(pk=old["review_a"]), Review.objects.get(pk=old["review_b"])
    assert (review_a.round_id, review_a.image_id, review_a.reviewer_id, review_a.status) == (
        rnd.pk,
        image.pk,
        users["a"],
        "submitted",
    )
    assert (review_a.n_accept, review_a.consensus_f1, review_a.manual, review_a.submitted_at) == (1, 1.0, False, WHEN)
    assert (review_b.manual, review_b.assigned_by_id, review_b.n_edit) == (True, users["admin"], 1)
    assert (review_b.consensus_f1, review_b.consensus_mean_iou, review_b.consensus_dice) == (0.5, 0.75, 0.8)
    assert sorted(rnd.reviews.values_list("pk", flat=True)) == sorted([review_a.pk, review_b.pk])

    decision = ReviewDecision.objects.get(pk=old["decision"])
    assert (decision.review_id, decision.cell_id, decision.decision, decision.cell_class_id) == (
        review_b.pk,
        cell.pk,
        "edit",
        old["class"],
    )
    assert decision.polygon == [*polygon[:3], [4.0, 14.0]]
    assert list(review_b.decisions.values_list("pk", flat=True)) == [decision.pk]
    comment = ReviewComment.objects.get(pk=old["comment"])
    assert (comment.review_id, comment.cell_id, comment.text) == (review_b.pk, cell.pk, "a little smaller")

    dispute = Dispute.objects.get(pk=old["dispute"])
    assert (dispute.round_id, dispute.image_id, dispute.reason, dispute.origin_cell_id) == (
        rnd.pk,
        image.pk,
        "class",
        cell.pk,
    )
    assert dispute.annotation == {"polygon": polygon, "class_id": old["class"]}
    assert dispute.versions == [{"review_id": review_a.pk, "reviewer_id": users["a"], "decision": "accept"}]
    assert (dispute.candidate, dispute.candidate_class_id, dispute.status, dispute.choice) == (
        polygon,
        old["class"],
        "resolved",
        str(review_a.pk),
    )
    assert (dispute.polygon, dispute.cell_class_id, dispute.resolved_by_id, dispute.resolved_at) == (
        polygon,
        old["class"],
        users["judge"],
        WHEN,
    )

    pair = PairAgreement.objects.get(pk=old["pair"])
    assert (pair.round_id, pair.image_id, pair.review_a_id, pair.review_b_id) == (
        rnd.pk,
        image.pk,
        review_a.pk,
        review_b.pk,
    )
    assert (pair.reviewer_a_id, pair.reviewer_b_id) == (users["a"], users["b"])
    assert (pair.f1, pair.mean_iou, pair.dice, pair.matched, pair.n_a, pair.n_b) == (1.0, 0.75, 0.8, 1, 1, 1)

    record = CorrectionRecord.objects.get(pk=old["record"])
    assert (record.image_id, record.round_id, record.kind, record.iou) == (image.pk, rnd.pk, "edited", 0.75)
    assert record.model_version == ModelVersion.objects.get(pk=old["version"])
    assert (record.proposal_id, record.verified_cell_id) == (old["proposal"], old["gold"])
    assert list(image.correction_records.values_list("pk", flat=True)) == [record.pk]

    export = ExportJob.objects.get(pk=old["export"])
    assert (export.project_id, export.created_by_id, export.kind, export.params, export.status) == (
        project.pk,
        users["admin"],
        "coco",
        {"layer": "verified"},
        "done",
    )
    assert (export.items_total, export.items_done, export.file, export.file_name) == (
        1,
        1,
        "exports/moved.json",
        "moved.json",
    )
    assert (export.content_type, export.size_bytes, export.finished_at) == ("application/json", 42, WHEN)
    assert list(project.export_jobs.values_list("pk", flat=True)) == [export.pk]

    idempotency = IdempotencyRecord.objects.get(pk=old["idempotency"])
    assert (idempotency.user_id, idempotency.key, idempotency.scope, idempotency.status_code) == (
        users["admin"],
        "key-1",
        "adjudication:1",
        200,
    )
    assert idempotency.request_hash == "f" * 64 and idempotency.response == {"ok": True}

    # The content types (and the permissions on them) moved with the models.
    assert CellClass.objects.get(pk=old["class"]).project_id == project.pk
    for (app, model), pk in old["content_types"].items():
        ct = ContentType.objects.get(pk=pk)
        assert (ct.app_label, ct.model) == (app, model)
        assert ct.permission_set.filter(codename=f"audit_{model}").exists()
    moved_models = [m for models in MOVED.values() for m in models]
    assert not ContentType.objects.filter(app_label="annotations", model__in=moved_models).exists()
    for model_class in (VerificationSettings, VerificationRound, Review, ReviewDecision, ReviewComment, Dispute):
        assert (
            ContentType.objects.get_for_model(model_class).pk
            == old["content_types"]["review", model_class._meta.model_name]
        )
    for model_class in (PairAgreement, CorrectionRecord):
        assert (
            ContentType.objects.get_for_model(model_class).pk
            == old["content_types"]["review", model_class._meta.model_name]
        )
    assert ContentType.objects.get_for_model(ExportJob).pk == old["content_types"]["interchange", "exportjob"]
    assert ContentType.objects.get_for_model(IdempotencyRecord).pk == old["content_types"]["core", "idempotencyrecord"]
