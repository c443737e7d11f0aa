"""The editor's history (issue #17): the revisions of the annotation layer with author, time and
what each changed; a revision previewed on the map (read only, not in the undo history) under a
"Preview of revision N" banner, Escape back to the current cells; "Restore this revision" after
confirming makes it the current layer as a new revision."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, Layer, Role
from annotations.services import cells as cell_services
from tests.browser.conftest import shot
from tests.browser.helpers import (
    ProjectFactory,
    UserFactory,
    annotate,
    login,
    member,
    submit_for_review,
    synthetic_image,
    wait_editor_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _outline_ids(image: Any) -> list[list[float]]:
    return sorted(
        (c.polygon[0] for c in Cell.objects.filter(image=image, layer=Layer.ANNOTATION)), key=lambda p: (p[0], p[1])
    )


def _save(image: Any, user: Any, cells: list[tuple[int | None, list[list[float]]]]) -> None:
    """A save that keeps the cells it names by id (as the editor's autosave does)."""
    image.refresh_from_db()
    class_id = image.project.classes.get(model_label=1).pk
    body = [{"class_id": class_id, "polygon": p} | ({"id": i} if i else {}) for i, p in cells]
    cell_services.cells_replace(image=image, user=user, base_revision=image.revision, cells=body)


def test_history_lists_previews_and_restores_a_revision(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — history", created_by=admin)
    ana = member(project, Role.ANNOTATOR, username="ana")
    image, outlines = synthetic_image(project, seed=5, n_cells=8)
    assert len(outlines) >= 4
    ids = annotate(image, ana, outlines[:4])  # revision 1: four cells
    first = _outline_ids(image)
    _save(image, ana, [(ids[0], outlines[0]), (ids[1], outlines[1])])  # revision 2: two removed
    _save(image, ana, [(ids[0], outlines[0]), (ids[1], outlines[1]), (None, outlines[4]), (None, outlines[5])])
    image.refresh_from_db()
    assert image.revision == 3

    login(page, live_server.url, "ana")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/images/{image.pk}")
    wait_editor_ready(page)
    page.click("[data-action=history-show]")
    page.wait_for_selector(".revisions button[data-revision='1']")
    rows = page.locator(".revisions button.revision")
    assert rows.count() == 3
    newest = rows.nth(0).inner_text()
    assert "#3" in newest and "current" in newest and "ana" in newest and "+2 added" in newest
    assert "2 removed" in rows.nth(1).inner_text()
    assert "+4 added" in rows.nth(2).inner_text()

    # preview revision 1: the banner says what differs, nothing is written or undoable
    page.click(".revisions button[data-revision='1']")
    banner = page.wait_for_selector(".map-banner.preview")
    text = banner.inner_text()
    assert "Preview of revision 1" in text and "4 cells" in text and "2 not in the current version" in text
    assert "2 added since" in text
    assert page.locator(".ol-layer-preview").count() == 1
    assert page.locator("[data-tool=draw]").is_disabled()
    shot(page, "50-editor-history-preview")
    image.refresh_from_db()
    assert image.revision == 3

    # Escape: back to the current cells
    page.keyboard.press("Escape")
    page.wait_for_selector(".map-banner.preview", state="hidden")
    assert page.locator(".ol-layer-preview").count() == 0
    assert page.locator("[data-tool=draw]").is_enabled()

    # preview again, restore after confirming: revision 4 = revision 1
    page.click(".revisions button[data-revision='1']")
    page.click("[data-action=restore-revision]")
    page.wait_for_selector(".dialog")
    assert "Restore revision 1?" in page.locator(".dialog").inner_text()
    shot(page, "51-editor-history-restore-confirm")
    page.click(".dialog .btn-primary")
    page.wait_for_selector(".revisions button[data-revision='4']")
    assert not page.locator(".map-banner.preview").is_visible()
    image.refresh_from_db()
    assert image.revision == 4
    assert _outline_ids(image) == first
    assert "Restored revision 1" in page.locator(".revisions button[data-revision='4']").inner_text()
    assert page.locator(".revisions button[data-revision='4'] .current-pill").count() == 1
    shot(page, "52-editor-history-restored")

    # a locked image (submitted): revisions can be previewed, not restored
    submit_for_review(image, ana)
    page.reload()
    wait_editor_ready(page)
    page.click("[data-action=history-show]")
    page.click(".revisions button[data-revision='2']")
    assert "Preview of revision 2" in page.wait_for_selector(".map-banner.preview").inner_text()
    assert page.locator("[data-action=restore-revision]").count() == 0
    page.click("[data-action=close-preview]")
    # back to the image's own banner: it is locked
    page.wait_for_selector(".map-banner.read-only")
