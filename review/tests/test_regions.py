"""Verification by region (issue #14): a slide's region goes through review on its own round,
its experts decide on the cells inside it only, and its verified result replaces only the
verified cells inside it. Two regions of one slide are reviewed independently."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, Image, ImageStatus, Layer, Region
from annotations.services.regions import region_create
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from review.models import CorrectionRecord, Dispute, Review, ReviewStatus, RoundStatus, VerificationRound
from review.selectors import round_current, work_queue
from review.services.adjudication import adjudication_decide
from review.services.reviews import review_draft_save, review_submit
from review.services.workflow import image_transition, region_transition, review_assign, transitions_allowed
from review.tests.support import annotate, fresh, rect

pytestmark = pytest.mark.django_db

LEFT = [[0, 0], [100, 0], [100, 100], [0, 100]]
RIGHT = [[100, 0], [200, 0], [200, 100], [100, 100]]


@pytest.fixture
def slide(project: Any) -> Image:
    """A 200 x 100 image standing in for a slide (the review needs only the ``tiled`` flag)."""
    from tests.factories import image_create

    image = image_create(project, width=200, height=100)
    Image.objects.filter(pk=image.pk).update(tiled=True)
    return fresh(image)


@pytest.fixture
def regions(slide: Image, annotator: Any) -> tuple[Region, Region]:
    return (
        region_create(image=slide, user=annotator, polygon=LEFT, name="left"),
        region_create(image=slide, user=annotator, polygon=RIGHT, name="right"),
    )


@pytest.fixture
def cells(slide: Image, annotator: Any, class_id: int) -> dict[str, list[int]]:
    ids = annotate(
        slide,
        annotator,
        [rect(10, 10, 20, 20), rect(50, 50, 20, 20), rect(120, 10, 20, 20), rect(160, 60, 20, 20)],
        class_id,
    )
    return {"left": ids[:2], "right": ids[2:]}


def _region(region: Region) -> Region:
    return Region.objects.select_related("image__project").get(pk=region.pk)


def submit_region(region: Region, user: Any) -> Region:
    return region_transition(region=_region(region), user=user, action="submit")


def reviewers(region: Region) -> list[Any]:
    current = round_current(image=region.image, region=region)
    return [
        r.reviewer
        for r in Review.objects.filter(round=current, status=ReviewStatus.ASSIGNED).select_related("reviewer")
    ]


def review(user: Any, region: Region, decisions: list[dict[str, Any]], added: list[Any] | None = None) -> None:
    r = _region(region)
    review_draft_save(image=r.image, user=user, decisions=decisions, added=added or [], comments=[], region=r)
    _, now = review_submit(image=r.image, user=user, region=r)
    assert now


def accept(ids: list[int]) -> list[dict[str, Any]]:
    return [{"cell_id": c, "decision": "accept"} for c in ids]


def verified_ids_in(region: Region) -> list[dict[str, Any]]:
    return list(
        Cell.objects.filter(image_id=region.image_id, layer=Layer.VERIFIED, provenance__region=region.pk).values(
            "provenance__origin_cell_id", "bbox_x"
        )
    )


def test_a_region_is_submitted_and_reviewed_on_its_cells_only(
    slide: Image, regions: tuple[Region, Region], cells: dict[str, list[int]], annotator: Any, experts: list[Any]
) -> None:
    left, right = regions
    submitted = submit_region(left, annotator)
    assert submitted.status == ImageStatus.IN_REVIEW
    assert fresh(slide).status == ImageStatus.ANNOTATING  # the image's own status does not move
    current = round_current(image=slide, region=left)
    assert current is not None and current.region_id == left.pk and current.number == 1
    assert round_current(image=slide) is None  # the image has no round of its own
    a, b = reviewers(left)
    # a decision on a cell of the other region is refused, naming the item
    with pytest.raises(ServiceValidationError) as refused:
        review_draft_save(
            image=slide, user=a, decisions=accept(cells["right"][:1]), added=[], comments=[], region=_region(left)
        )
    assert "decisions.0" in refused.value.errors and "this region" in refused.value.errors["decisions.0"]
    # an added cell outside the region is refused too
    with pytest.raises(ServiceValidationError) as outside:
        review_draft_save(
            image=slide,
            user=a,
            decisions=[],
            added=[{"class_id": Cell.objects.get(pk=cells["left"][0]).cell_class_id, "polygon": rect(150, 40, 10, 10)}],
            comments=[],
            region=_region(left),
        )
    assert "outside the region" in outside.value.errors["added.0"]
    # the reviewers decide on the region's two cells only: accept_undecided covers just those
    r = _region(left)
    review_draft_save(image=slide, user=a, decisions=[], added=[], comments=[], region=r)
    review_submit(image=slide, user=a, accept_undecided=True, region=r)
    decided = set(Review.objects.get(round=current, reviewer=a).decisions.values_list("cell_id", flat=True))
    assert decided == set(cells["left"])
    review(b, left, accept(cells["left"]))
    assert _region(left).status == ImageStatus.VERIFIED
    assert _region(right).status == ImageStatus.NEW
    assert fresh(slide).status == ImageStatus.ANNOTATING
    verified = Cell.objects.filter(image=slide, layer=Layer.VERIFIED)
    assert sorted(c.provenance["origin_cell_id"] for c in verified) == sorted(cells["left"])
    assert all(c.provenance["region"] == left.pk for c in verified)
    current.refresh_from_db()
    assert current.status == RoundStatus.CLOSED


def test_two_regions_in_review_at_once_are_verified_independently(
    slide: Image, regions: tuple[Region, Region], cells: dict[str, list[int]], annotator: Any, experts: list[Any]
) -> None:
    left, right = regions
    submit_region(left, annotator)
    submit_region(right, annotator)
    assert {_region(left).status, _region(right).status} == {ImageStatus.IN_REVIEW}
    left_reviewers, right_reviewers = reviewers(left), reviewers(right)
    # the same expert may review both regions: each review belongs to its own round
    shared = set(left_reviewers) & set(right_reviewers)
    assert shared, "three experts, two per region: one reviews both"
    for user in right_reviewers:
        review(user, right, accept(cells["right"]))
    assert _region(right).status == ImageStatus.VERIFIED
    assert _region(left).status == ImageStatus.IN_REVIEW  # untouched by the other region's result
    for user in left_reviewers:
        review(user, left, [*accept(cells["left"][:1]), {"cell_id": cells["left"][1], "decision": "reject"}])
    assert _region(left).status == ImageStatus.VERIFIED
    origins = {c.provenance["region"]: set() for c in Cell.objects.filter(image=slide, layer=Layer.VERIFIED)}
    for c in Cell.objects.filter(image=slide, layer=Layer.VERIFIED):
        origins[c.provenance["region"]].add(c.provenance["origin_cell_id"])
    assert origins == {left.pk: {cells["left"][0]}, right.pk: set(cells["right"])}
    # correction records belong to each region's round
    assert CorrectionRecord.objects.filter(round__region=right).count() == 2
    assert CorrectionRecord.objects.filter(round__region=left).count() == 1


def test_reopening_a_region_withdraws_only_its_verified_cells(
    slide: Image,
    regions: tuple[Region, Region],
    cells: dict[str, list[int]],
    annotator: Any,
    experts: list[Any],
    admin_user: Any,
) -> None:
    left, right = regions
    for region in regions:
        submit_region(region, annotator)
        for user in reviewers(region):
            review(user, region, accept(cells[region.name]))
    assert Cell.objects.filter(image=slide, layer=Layer.VERIFIED).count() == 4
    with pytest.raises(PermissionDeniedError):
        region_transition(region=_region(left), user=annotator, action="reopen")
    region_transition(region=_region(left), user=admin_user, action="reopen")
    assert _region(left).status == ImageStatus.ANNOTATING and _region(right).status == ImageStatus.VERIFIED
    left_over = Cell.objects.filter(image=slide, layer=Layer.VERIFIED)
    assert {c.provenance["region"] for c in left_over} == {right.pk}
    assert not CorrectionRecord.objects.filter(round__region=left).exists()
    # submitted again: a second round of that region
    submit_region(left, annotator)
    assert round_current(image=slide, region=left).number == 2  # type: ignore[union-attr]
    assert round_current(image=slide, region=right).number == 1  # type: ignore[union-attr]


def test_submission_is_refused_with_the_field_named(
    project: Any,
    slide: Image,
    regions: tuple[Region, Region],
    cells: dict[str, list[int]],
    annotator: Any,
    experts: list[Any],
) -> None:
    left, right = regions
    empty = region_create(image=slide, user=annotator, polygon=[[90, 80], [99, 80], [99, 99]], name="empty")
    with pytest.raises(ServiceValidationError) as no_cells:
        submit_region(empty, annotator)
    assert "region" in no_cells.value.errors and "no annotation cell" in no_cells.value.errors["region"]
    assert _region(empty).status == ImageStatus.NEW and not VerificationRound.objects.exists()
    with pytest.raises(ServiceValidationError) as unknown:
        region_transition(region=_region(left), user=annotator, action="start")
    assert "action" in unknown.value.errors
    submit_region(left, annotator)
    with pytest.raises(ConflictError) as again:
        submit_region(left, annotator)
    assert again.value.payload["status"] == ImageStatus.IN_REVIEW
    assert VerificationRound.objects.filter(region=left).count() == 1
    # a small (not tiled) image keeps the image as the unit
    from tests.factories import image_create

    small = image_create(project, width=200, height=100, seed=1)
    annotate(small, annotator, [rect(10, 10, 20, 20)], Cell.objects.get(pk=cells["left"][0]).cell_class_id)
    drawn = region_create(image=fresh(small), user=annotator, polygon=LEFT)
    with pytest.raises(ServiceValidationError) as whole:
        submit_region(drawn, annotator)
    assert "tiled" in whole.value.detail and "region" in whole.value.errors
    # while a region is under review the slide is not submitted whole (its verified layer would
    # replace the region's result)
    assert "submit" not in transitions_allowed(user=annotator, image=fresh(slide))
    with pytest.raises(ConflictError) as whole_slide:
        image_transition(image=fresh(slide), user=annotator, action="submit")
    assert "regions" in whole_slide.value.detail and fresh(slide).status == ImageStatus.ANNOTATING
    # the image submitted whole (no region locked): its regions are not submitted on their own
    region_transition(region=_region(left), user=project.memberships.get(role="admin").user, action="reopen")
    assert "submit" in transitions_allowed(user=annotator, image=fresh(slide))
    image_transition(image=fresh(slide), user=annotator, action="submit")
    with pytest.raises(ConflictError):
        submit_region(right, annotator)


def test_cells_inside_a_region_under_review_are_locked(
    slide: Image, regions: tuple[Region, Region], cells: dict[str, list[int]], annotator: Any, experts: list[Any]
) -> None:
    left, _ = regions
    submit_region(left, annotator)
    current = list(Cell.objects.filter(image=slide, layer=Layer.ANNOTATION).order_by("id").values("id", "polygon"))
    class_id = Cell.objects.get(pk=cells["left"][0]).cell_class_id
    # dropping a cell of the region under review is refused; nothing is written
    with pytest.raises(ConflictError) as locked:
        annotate(slide, annotator, [c["polygon"] for c in current if c["id"] != cells["left"][0]], class_id)
    assert "left" in locked.value.detail
    assert Cell.objects.filter(image=slide, layer=Layer.ANNOTATION).count() == 4
    # outside the region the slide stays editable
    from annotations.services.cell_deltas import cells_delta_apply

    fresh_slide = fresh(slide)
    done = cells_delta_apply(
        image=fresh_slide,
        user=annotator,
        base_revision=fresh_slide.revision,
        data={
            "added": [{"class_id": class_id, "polygon": rect(150, 20, 10, 10)}],
            "deleted": [{"id": cells["right"][1]}],
        },
    )
    assert len(done.added) == 1
    with pytest.raises(ConflictError):
        fresh_slide = fresh(slide)
        cells_delta_apply(
            image=fresh_slide,
            user=annotator,
            base_revision=fresh_slide.revision,
            data={"added": [{"class_id": class_id, "polygon": rect(70, 20, 10, 10)}]},
        )


def test_a_disputed_region_is_adjudicated_and_verified(
    slide: Image,
    regions: tuple[Region, Region],
    cells: dict[str, list[int]],
    annotator: Any,
    experts: list[Any],
    admin_user: Any,
) -> None:
    left, right = regions
    submit_region(left, annotator)
    submit_region(right, annotator)
    a, b = reviewers(left)
    review(a, left, accept(cells["left"]))
    review(b, left, [*accept(cells["left"][:1]), {"cell_id": cells["left"][1], "decision": "reject"}])
    assert _region(left).status == ImageStatus.DISPUTED
    dispute = Dispute.objects.get(round__region=left)
    queue = work_queue(user=admin_user, project=slide.project)
    assert [getattr(i, "queue_region", None) for i in queue["adjudicate"]["images"]] == [_region(left)]
    with pytest.raises(ConflictError):  # the right region is not disputed
        adjudication_decide(
            image=slide,
            user=admin_user,
            decisions=[{"dispute_id": dispute.pk, "choice": "reject"}],
            region=_region(right),
        )
    adjudication_decide(
        image=slide,
        user=admin_user,
        decisions=[{"dispute_id": dispute.pk, "choice": "annotation"}],
        region=_region(left),
    )
    assert _region(left).status == ImageStatus.VERIFIED and _region(right).status == ImageStatus.IN_REVIEW
    assert Cell.objects.filter(image=slide, layer=Layer.VERIFIED, provenance__region=left.pk).count() == 2


def test_assignment_by_hand_and_the_work_queue_name_the_region(
    project: Any,
    slide: Image,
    regions: tuple[Region, Region],
    cells: dict[str, list[int]],
    annotator: Any,
    admin_user: Any,
) -> None:
    from annotations.models import Role
    from tests.factories import member

    left, _ = regions
    submit_region(left, annotator)  # no expert in the project yet: submitted, slots open
    assert _region(left).status == ImageStatus.SUBMITTED
    queue = work_queue(user=admin_user, project=project)
    assert queue["assign"]["count"] == 1 and queue["assign"]["images"][0].queue_region == _region(left)
    expert = member(project, Role.EXPERT, username="late")
    with pytest.raises(ServiceValidationError) as author:
        review_assign(image=slide, actor=admin_user, reviewer=annotator, region=_region(left))
    assert "reviewer" in author.value.errors
    review_assign(image=slide, actor=admin_user, reviewer=expert, region=_region(left))
    assert _region(left).status == ImageStatus.IN_REVIEW
    mine = work_queue(user=expert, project=project)["review"]
    assert mine["count"] == 1 and mine["images"][0].queue_region == _region(left)
