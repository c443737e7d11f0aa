"""The image list's upload and pre-segmentation panels in a real browser (issue #17): many files
by drop and by the file picker with their metadata, per-file progress and the server's per-file
refusals (a duplicate named); the project run with a model version, its progress bar, ETA,
per-image statuses and failure reasons; one image pre-segmented again, and a refusal (409) as a
sentence."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from annotations.models import Image, ImageStatus, PresegmentStatus, Role
from cytoseg.synthetic import generate_field
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member, synthetic_image
from training.models import ModelVersion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def png(seed: int) -> bytes:
    field = generate_field(seed=seed, width=320, height=240, n_cells=4, n_erythrocytes=1)
    buffer = io.BytesIO()
    PILImage.fromarray(field.image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_many_files_with_metadata_progress_and_named_refusals(
    live_server: Any, page: Any, tmp_path: Path
) -> None:
    admin = UserFactory(username="dr.upload")
    project = ProjectFactory(name="Thyroid FNA — uploads", created_by=admin)
    files = {"field-001.png": png(1), "field-002.png": png(2), "copy-of-001.png": png(1), "notes.png": b"not an image"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    login(page, live_server.url, "dr.upload")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    page.wait_for_selector(".empty h3")
    page.click("[data-action=open-upload]")
    page.wait_for_selector(".upload-panel .dropzone")

    # one file dropped on the zone (a real drop event with a DataTransfer) ...
    data_transfer = page.evaluate_handle(
        """(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
           const dt = new DataTransfer(); dt.items.add(new File([bytes], 'field-003.png', {type: 'image/png'})); return dt; }""",
        base64.b64encode(png(3)).decode(),
    )
    page.dispatch_event(".dropzone", "drop", {"dataTransfer": data_transfer})
    page.wait_for_selector(".upload-file[data-file='field-003.png'][data-state=waiting]")
    # ... and four chosen with the file picker
    page.set_input_files(".upload-panel input[type=file]", [str(tmp_path / n) for n in files])
    assert page.locator(".upload-file").count() == 5

    page.select_option(".upload-panel select[name=bethesda]", "IV")
    page.fill(".upload-panel input[name=stain]", "Papanicolaou")
    page.fill(".upload-panel input[name=magnification]", "40x")
    page.fill(".upload-panel input[name=slide_code]", "S-2026-117")
    page.select_option(".upload-panel select[name=split]", "train")
    shot(page, "40-upload-files-chosen")
    # a slow line (about 200 KB/s up): each file's own bar moves with the upload progress events
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 200 * 1024},
    )
    page.click("[data-action=upload]")
    page.wait_for_selector(".upload-file[data-state=uploading]")
    page.wait_for_function(
        "[...document.querySelectorAll('.upload-file[data-state=uploading] [role=progressbar]')]"
        ".some(b => +b.getAttribute('aria-valuenow') > 0 && +b.getAttribute('aria-valuenow') < 100)"
    )
    shot(page, "40b-upload-in-progress")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    page.wait_for_function(
        "document.querySelectorAll('.upload-file[data-state=done], .upload-file[data-state=failed]').length === 5",
        timeout=30_000,
    )
    # per-file results: three stored, the duplicate and the non-image refused with the server's reason
    for name in ("field-003.png", "field-001.png", "field-002.png"):
        assert page.locator(f".upload-file[data-file='{name}']").get_attribute("data-state") == "done"
    # the same bytes twice in one selection: named in the browser, never sent
    dup = page.locator(".upload-file[data-file='copy-of-001.png']")
    assert dup.get_attribute("data-state") == "failed"
    assert "Duplicate of 'field-001.png' in this selection" in dup.locator("[data-error=file]").inner_text()
    bad = page.locator(".upload-file[data-file='notes.png']")
    assert bad.get_attribute("data-state") == "failed"
    assert bad.locator("[data-error=file]").inner_text().strip()
    assert "3 of 5 uploaded, 2 refused" in page.locator(".upload-totals").inner_text()
    # the list shows the new images
    page.wait_for_function("document.querySelectorAll('.image-card').length === 3")
    shot(page, "41-upload-done-with-refusals", full=True)
    # a refused file can be taken off the list
    dup.locator("[data-action=remove-file]").click()
    assert page.locator(".upload-file").count() == 4

    # a file already in the project: the server's refusal names the image it duplicates
    page.click("[data-action=clear-upload]")
    assert page.locator(".upload-file").count() == 0
    (tmp_path / "again-002.png").write_bytes(files["field-002.png"])
    page.set_input_files(".upload-panel input[type=file]", [str(tmp_path / "again-002.png")])
    page.wait_for_selector(".upload-file[data-file='again-002.png'][data-state=waiting]")
    page.click("[data-action=upload]")
    again = page.wait_for_selector(".upload-file[data-file='again-002.png'][data-state=failed] [data-error=file]")
    assert "Duplicate of 'field-002.png' already in this project" in again.inner_text()
    shot(page, "41b-upload-duplicate-in-project")

    stored = Image.objects.filter(project=project)
    assert sorted(stored.values_list("file_name", flat=True)) == ["field-001.png", "field-002.png", "field-003.png"]
    assert set(stored.values_list("bethesda", "stain", "magnification", "slide_code", "split")) == {
        ("IV", "Papanicolaou", "40x", "S-2026-117", "train")
    }


def test_presegment_project_with_version_progress_eta_and_failures(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.model")
    project = ProjectFactory(name="Thyroid FNA — models", created_by=admin)
    images = [synthetic_image(project, seed=s, width=320, height=240, n_cells=3)[0] for s in (1, 2, 3, 4)]
    locked = images[3]
    Image.objects.filter(pk=locked.pk).update(status=ImageStatus.VERIFIED)
    ModelVersion.objects.create(project=project, kind="watershed", number=1, status="active")
    cellpose = ModelVersion.objects.create(project=project, kind="cellpose", number=2, status="candidate")

    login(page, live_server.url, "dr.model")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    page.wait_for_selector(".image-card")
    page.click("[data-action=open-presegment]")
    page.wait_for_selector(
        f".presegment-panel select[name=model_version] option[value='{cellpose.pk}']", state="attached"
    )
    page.select_option(".presegment-panel select[name=model_version]", str(cellpose.pk))
    page.click("[data-action=presegment-project]")
    page.wait_for_selector(".presegment-progress .progress-bar")
    page.wait_for_selector(".presegment-table tr[data-status=queued]")
    run = [i for i in images if i.pk != locked.pk]
    assert Image.objects.filter(pk__in=[i.pk for i in run], presegment_model=cellpose).count() == 3
    assert page.locator(".presegment-table tbody tr").count() == 3  # the verified image is skipped
    assert "estimating" in page.locator(".presegment-eta").inner_text()

    # the worker's progress (written as the worker would): one done, one failed, one running
    Image.objects.filter(pk=run[0].pk).update(presegment_status=PresegmentStatus.DONE)
    Image.objects.filter(pk=run[1].pk).update(
        presegment_status=PresegmentStatus.FAILED, presegment_error="CUDA out of memory on the worker"
    )
    Image.objects.filter(pk=run[2].pk).update(presegment_status=PresegmentStatus.RUNNING)
    page.wait_for_selector(".presegment-table tr[data-status=failed]")
    page.wait_for_selector(".presegment-table tr[data-status=running]")
    counts = page.locator(".presegment-counts").inner_text()
    assert "2 of 3 images" in counts and "1 running" in counts and "1 failed" in counts
    assert "left" in page.locator(".presegment-eta").inner_text()
    assert "CUDA out of memory" in page.locator(".presegment-table tr[data-status=failed]").inner_text()
    shot(page, "42-presegment-project-running", full=True)

    # closed and opened again: the run under way is followed (its images still queued or running)
    page.click(".presegment-panel .panel-head .icon-btn")
    page.wait_for_selector(".presegment-panel", state="detached")
    page.click("[data-action=open-presegment]")
    page.wait_for_selector(".presegment-panel .presegment-table tr[data-status=running]")

    Image.objects.filter(pk=run[2].pk).update(presegment_status=PresegmentStatus.DONE)
    page.wait_for_selector(".presegment-progress[data-complete=true]")
    assert "finished" in page.locator(".presegment-eta").inner_text()
    shot(page, "43-presegment-project-finished", full=True)


def test_presegment_one_image_and_refusal_as_sentence(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.one")
    project = ProjectFactory(name="Thyroid FNA — one image", created_by=admin)
    member(project, Role.ANNOTATOR, username="ana.one")
    image, _ = synthetic_image(project, seed=5, width=320, height=240, n_cells=3)
    other, _ = synthetic_image(project, seed=6, width=320, height=240, n_cells=3)

    login(page, live_server.url, "ana.one")
    page.goto(f"{live_server.url}/#/projects/{project.pk}")
    page.wait_for_selector(".image-card")
    assert page.locator("[data-action=open-presegment]").is_hidden()  # the project run is for admins

    card = page.locator(f".image-card:has(.file-name:text-is('{image.file_name}'))")
    card.locator("[data-action=presegment-image]").click()
    page.wait_for_selector(".presegment-dialog")
    shot(page, "44-presegment-image-dialog")
    page.click(".presegment-dialog [data-action=presegment-image]")
    page.wait_for_selector(".presegment-dialog", state="detached")
    page.wait_for_selector(f".image-card:has(.file-name:text-is('{image.file_name}')) [data-presegment=queued]")
    assert Image.objects.get(pk=image.pk).presegment_status == PresegmentStatus.QUEUED

    # locked for review meanwhile: the 409 is said as a sentence in the dialog
    card = page.locator(f".image-card:has(.file-name:text-is('{other.file_name}'))")
    card.locator("[data-action=presegment-image]").click()
    page.wait_for_selector(".presegment-dialog")
    Image.objects.filter(pk=other.pk).update(status=ImageStatus.IN_REVIEW)
    page.click(".presegment-dialog [data-action=presegment-image]")
    error = page.wait_for_selector(".presegment-dialog [data-error=presegment]:not([hidden])")
    assert "locked until an admin reopens it" in error.inner_text()
    shot(page, "45-presegment-image-refused")
