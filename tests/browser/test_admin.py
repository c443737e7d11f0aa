"""Admin screens in a real browser: start a training job run by a real Celery worker and watch
its progress and loss curves; the model registry (metrics side by side, promote, roll back);
the retraining schedule; the expert-agreement dashboard."""

from __future__ import annotations

import time
from typing import Any

import pytest

from annotations.models import Image, Role
from review.models import Review
from review.services import reviews
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    login,
    member,
    submit_for_review,
    synthetic_image,
)
from tests.factories import model_version_files
from training.models import (
    DatasetSnapshot,
    Evaluation,
    JobStatus,
    ModelStatus,
    TrainingJob,
    TrainingPolicy,
)
from training.services import registry
from training.services.registry import model_version_baseline
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_starts_a_training_job_and_watches_it_to_the_end(live_server: Any, page: Any, celery_worker: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — training", created_by=admin)
    synthetic_project(project=project, splits={"train": 2, "test": 1}, size=96, n_cells=6, n_erythrocytes=2)

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    page.click("text=Administration")
    page.wait_for_selector(".job-form")
    page.click("[data-kind=cellpose]")
    page.click(".segmented[data-name=preset] [data-value=tiny]")
    page.fill("input[data-field='config.cellpose.n_epochs']", "4")
    page.keyboard.press("Tab")
    page.select_option(".job-form select >> nth=0", "cpu")
    page.click(".advanced summary")
    page.fill(".advanced textarea", '{"cellpose": {"bsize": 64}}')
    page.keyboard.press("Tab")
    page.wait_for_function("document.querySelector('.config-preview pre').textContent.includes('bsize')")
    shot(page, "15-training-form", full=True)
    page.click("[data-action=start-job]")
    page.wait_for_selector(".job-progress")
    job = TrainingJob.objects.get(project=project)
    assert job.kind == "cellpose"
    assert job.config == {"preset": "tiny", "device": "cpu", "cellpose": {"n_epochs": 4, "bsize": 64}}

    # live: the worker picks it up; the progress bar and the loss curves follow it
    seen: set[int] = set()
    running_shot = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = page.locator("[data-testid=job-status]").inner_text()
        percent = page.locator("[data-testid=job-percent]").inner_text().rstrip("%")
        if percent.isdigit():
            seen.add(int(percent))
        if (
            status == "Running"
            and not running_shot
            and page.locator(".chart-card[data-stage=cellpose] path.line").count()
        ):
            shot(page, "16-training-running", full=True)
            running_shot = True
        if status in ("Succeeded", "Failed", "Cancelled"):
            break
        page.wait_for_timeout(150)
    assert status == "Succeeded", page.locator(".log").inner_text()[-2000:]
    assert any(0 < p < 100 for p in seen), f"no intermediate progress seen: {sorted(seen)}"
    assert page.locator("[data-testid=job-percent]").inner_text() == "100%"
    assert page.locator(".chart-card[data-stage=cellpose] path.line").count() >= 1
    assert "cellpose epoch 4/4" in page.locator(".log").inner_text()
    assert "succeeded" in page.locator(".log").inner_text()
    shot(page, "17-training-done", full=True)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.log
    assert [p["epoch"] for p in job.curves["cellpose"]] == [0, 1, 2, 3]

    page.click(".tabs >> text=Model registry")
    page.wait_for_selector("table.registry tbody tr")
    assert "Cellpose 3 v1" in page.locator("table.registry").inner_text()
    shot(page, "18-registry-after-training")


def _metrics(base: float) -> dict[str, float]:
    names = ["dice", "iou", "f1_50", "f1_70", "ranked_ap50", "dsb", "coco_AP", "erythrocyte_fp_rate"]
    return {
        n: round(base + 0.013 * i, 3) if n != "erythrocyte_fp_rate" else round(0.2 - base / 5, 3)
        for i, n in enumerate(names)
    }


def _reviewers(image: Image) -> list[Any]:
    return [
        r.reviewer
        for r in Review.objects.filter(image=image, status="assigned")
        .select_related("reviewer")
        .order_by("reviewer_id")
    ]


def test_admin_registry_schedule_and_agreement_screens(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — operations", created_by=admin)
    annotator = member(project, Role.ANNOTATOR, username="ana")
    for name in ("dr.kim", "dr.osei", "dr.lund"):
        member(project, Role.EXPERT, username=name)
    thyroid = project.classes.get(model_label=1).pk
    # three reviewed images with different levels of agreement
    for seed, mode in ((61, "agree"), (62, "edit"), (63, "dispute")):
        image, outlines = synthetic_image(project, seed=seed, n_cells=9, bethesda="IV")
        ids = annotate(image, annotator, outlines[:4])
        submit_for_review(image, annotator)
        first, second = _reviewers(image)
        reviews.review_draft_save(
            image=image,
            user=first,
            comments=[],
            added=[],
            decisions=[{"cell_id": c, "decision": "accept"} for c in ids],
        )
        reviews.review_submit(image=image, user=first)
        decisions: list[dict[str, Any]] = [{"cell_id": c, "decision": "accept"} for c in ids]
        added: list[dict[str, Any]] = []
        if mode == "edit":
            decisions[0] = {"cell_id": ids[0], "decision": "edit", "polygon": [[x + 3, y + 2] for x, y in outlines[0]]}
        if mode == "dispute":
            decisions[1] = {"cell_id": ids[1], "decision": "reject"}
            decisions[2] = {"cell_id": ids[2], "decision": "reject"}
            added = [{"class_id": thyroid, "polygon": outlines[6]}]
        reviews.review_draft_save(image=image, user=second, comments=[], added=added, decisions=decisions)
        reviews.review_submit(image=image, user=second)

    # the registry: a baseline and two Cellpose versions evaluated on one snapshot
    baseline = model_version_baseline(project=project)
    snapshot = DatasetSnapshot.objects.create(
        project=project, number=1, counts={"train": {"images": 40}, "test": {"images": 12}}
    )
    v1 = model_version_files(project, "cellpose", {"cellpose.pth": b"1"}, name="first fine-tune", snapshot=snapshot)
    v2 = model_version_files(project, "cellpose", {"cellpose.pth": b"2"}, name="more clusters", snapshot=snapshot)
    for version, base in ((baseline, 0.61), (v1, 0.72), (v2, 0.78)):
        per = {
            cat: {k: round(v - 0.02 * i, 3) for k, v in _metrics(base).items()}
            for i, cat in enumerate(["II", "IV", "VI"])
        }
        overall = _metrics(base)
        intervals = {k: [round(v - 0.04, 3), round(v + 0.03, 3)] for k, v in overall.items()}
        raw = {k: round(v + 0.01, 3) for k, v in overall.items()}
        Evaluation.objects.create(
            model_version=version,
            snapshot=snapshot,
            overall=overall,
            per_bethesda=per,
            intervals=intervals,
            raw_overall=raw,
        )
    registry.model_version_promote(version=v1, user=admin, reason="initial")

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/models")
    page.wait_for_selector("table.registry tbody tr")
    page.click(f"tr[data-version='{v2.pk}'] .expand")
    page.wait_for_selector("tr.sub-row table")
    shot(page, "19-registry")
    assert page.locator(f"tr[data-version='{v2.pk}'] td.best").count() >= 7  # best on every metric
    # each value with its 95% bootstrap interval, the raw-mask figure on hover; who pre-segments now
    dice = page.locator(f"tr[data-version='{v2.pk}'] td[data-metric=dice]")
    assert dice.locator(".ci").inner_text() == "0.740\u20130.810"  # an en dash between the bounds
    assert "raw masks (before they became polygons): 0.790" in (dice.get_attribute("title") or "")
    assert page.locator(f"tr[data-version='{v1.pk}'] .presegmenter").count() == 1
    assert page.locator("table.registry .presegmenter").count() == 1
    page.click(f"tr[data-version='{v2.pk}'] [data-action=promote]")
    # the gate's verdict against the current pre-segmenter (v1) before a manual promotion
    verdict = page.wait_for_selector(".dialog .gate-verdict[data-state=ready]")
    assert verdict.get_attribute("data-promote") == "true"
    assert "Against the current pre-segmenter (Cellpose 3 v1): f1_50 0.8060 vs 0.7460" in verdict.inner_text()
    assert page.locator("[data-action=confirm-promote]").inner_text() == "Promote"
    page.fill(".dialog input", "better on clusters")
    page.click("[data-action=confirm-promote]")
    page.wait_for_selector(f"tr[data-version='{v2.pk}'][data-status=active]")
    page.wait_for_selector(f"tr[data-version='{v2.pk}'] .presegmenter")
    v2.refresh_from_db()
    assert v2.status == ModelStatus.ACTIVE and v2.replaced_id == v1.pk
    # roll back in one click, from the row of the version that replaced another
    assert page.locator(f"tr[data-version='{v2.pk}'] [data-action=rollback-version]").inner_text() == "Roll back to v1"
    page.click(f"tr[data-version='{v2.pk}'] [data-action=rollback-version]")
    page.wait_for_selector(f"tr[data-version='{v1.pk}'][data-status=active]")
    v1.refresh_from_db()
    assert v1.status == ModelStatus.ACTIVE

    # the retraining schedule
    page.click(".tabs >> text=Retraining schedule")
    page.wait_for_selector(".schedule-form")
    page.check("[data-field=schedule_enabled]")
    page.click("text=Weekdays 22:00")
    page.fill("[data-field=min_new_images]", "5")
    page.keyboard.press("Tab")
    page.select_option(".schedule-form select >> nth=1", "tiny")
    page.click("[data-action=save-schedule]")
    page.wait_for_function("document.querySelector('.schedule-status .pill')?.textContent === 'On'")
    policy = TrainingPolicy.objects.get(project=project)
    assert policy.schedule_enabled and policy.cron_hour == "22" and policy.cron_day_of_week == "1-5"
    assert policy.min_new_images == 5 and policy.job_config == {"preset": "tiny"}
    assert policy.periodic_task is not None and policy.periodic_task.enabled
    shot(page, "20-schedule", full=True)

    # the agreement dashboard
    page.click(".tabs >> text=Expert agreement")
    page.wait_for_selector(".expert-row")
    page.wait_for_selector(".per-image .hbar")
    assert page.locator(".per-image .hbar").count() == 3
    assert page.locator(".matrix td:not(.diag)").count() == 6
    # three submissions, three rounds (the disputed one once, not once per dispute)
    rounds = page.locator(".stat:has(.stat-label:text-is('Review rounds'))")
    assert rounds.locator(".stat-value").inner_text() == "3"
    assert rounds.locator(".muted").inner_text() == "3 past consensus · 1 with disputes"
    shot(page, "21-agreement", full=True)


def test_a_manual_promotion_shows_the_gates_verdict_and_a_zero_proposal_run_warns(live_server: Any, page: Any) -> None:
    """A model scoring 0.000 everywhere: the promote dialog says the gate would not promote it
    and why; promoted anyway, its empty pre-segmentation reads "0 proposals from <model>" in the
    image list and the editor, not "Done"; one click in the registry rolls it back."""
    from inference.services import proposals_store

    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — gate", created_by=admin)
    baseline = model_version_baseline(project=project)
    snapshot = DatasetSnapshot.objects.create(project=project, number=1, counts={"test": {"images": 12}})
    zero = model_version_files(project, "cellpose", {"cellpose.pth": b"0"}, name="broken export", snapshot=snapshot)
    for version, base in ((baseline, 0.61), (zero, 0.0)):
        metrics = {k: (0.0 if base == 0 else v) for k, v in _metrics(base).items()}
        Evaluation.objects.create(model_version=version, snapshot=snapshot, overall=metrics, per_bethesda={})
    image, _ = synthetic_image(project, seed=71, n_cells=6)

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/models")
    page.wait_for_selector(f"tr[data-version='{zero.pk}']")
    page.click(f"tr[data-version='{zero.pk}'] [data-action=promote]")
    verdict = page.wait_for_selector(".dialog .gate-verdict[data-state=ready]")
    assert verdict.get_attribute("data-promote") == "false"
    text = verdict.inner_text()
    assert "The promotion gate would NOT promote this version" in text
    assert "Against the current pre-segmenter (Watershed baseline v1): f1_50 0.0000 vs 0.6360" in text
    assert page.locator(".gate-metrics tr[data-metric=f1_50] td").all_inner_texts()[1:] == ["0.000", "0.636"]
    confirm = page.locator("[data-action=confirm-promote]")
    assert confirm.inner_text() == "Promote anyway" and "btn-danger" in (confirm.get_attribute("class") or "")
    shot(page, "22-promote-gate-verdict")
    page.fill(".dialog input", "try it anyway")
    confirm.click()
    page.wait_for_selector(f"tr[data-version='{zero.pk}'][data-status=active] .presegmenter")

    # its pre-segmentation finds nothing: a warning naming the model, not "Done"
    proposals_store(image=image, model_version=zero, contours=[])
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    note = page.wait_for_selector(".image-card .presegment-note")
    assert note.inner_text().strip() == "Model: 0 proposals from Cellpose 3 v1"
    assert "warn" in (note.get_attribute("class") or "")
    shot(page, "23-image-list-zero-proposals")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    note = page.wait_for_selector(".presegment-note")
    assert note.inner_text().strip() == "Pre-segmentation: 0 proposals from Cellpose 3 v1"
    shot(page, "24-editor-zero-proposals")

    # the first Cellpose version replaced the watershed baseline: one click rolls it back
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/models")
    page.wait_for_selector(f"tr[data-version='{zero.pk}'][data-status=active]")
    assert page.locator("[data-action=rollback][data-kind=cellpose]").count() == 1
    shot(page, "25-registry-zero-model-active")
    page.click(f"tr[data-version='{zero.pk}'] [data-action=rollback-version]")
    page.wait_for_selector(f"tr[data-version='{baseline.pk}'] .presegmenter")
    zero.refresh_from_db()
    assert zero.status == ModelStatus.RETIRED
    shot(page, "26-registry-rolled-back")
