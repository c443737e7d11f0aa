"""The job screen during evaluation (issue #17): a job used to sit at 94 % for the minutes
evaluation takes; it now says which model and which test image are being scored, with a bar of
its own, and the overall percentage moves with it."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login
from training.models import JobStatus, TrainingJob
from training.services import jobs
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _evaluating(job: TrainingJob, image: int) -> None:
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        progress={
            "stage": "evaluate",
            "phase": "evaluate",
            "model_version": 1,
            "version": "Cellpose v2",
            "version_index": 1,
            "versions": 1,
            "image": image,
            "images": 12,
        },
    )


def test_the_job_screen_follows_evaluation_image_by_image(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Evaluation progress", created_by=admin)
    synthetic_project(project=project, splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    with mock.patch("core.queue.task_send"):
        job = jobs.training_job_start(project=project, user=admin, kind="cellpose", config={"preset": "tiny"})
    _evaluating(job, 3)

    login(page, live_server.url, "dr.head")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/jobs/{job.pk}")
    page.locator("[data-testid=job-evaluation]").wait_for(timeout=10_000)
    assert page.locator("[data-testid=job-progress-text]").inner_text() == "Evaluating Cellpose v2: image 3 / 12"
    assert page.locator("[data-testid=job-evaluation-percent]").inner_text() == "17%"
    bar = page.locator("[data-testid=job-evaluation] [role=progressbar]")
    assert bar.get_attribute("aria-label") == "Evaluation progress"
    assert bar.get_attribute("aria-valuenow") == str(round(2 / 12 * 1000) / 10)
    first = int(page.locator("[data-testid=job-percent]").inner_text().rstrip("%"))
    shot(page, "job-evaluation-progress")
    # the screen polls: the next image moves both bars
    _evaluating(job, 10)
    page.wait_for_function(
        "document.querySelector('[data-testid=job-progress-text]')?.textContent.includes('image 10 / 12')",
        timeout=10_000,
    )
    assert int(page.locator("[data-testid=job-percent]").inner_text().rstrip("%")) > first
