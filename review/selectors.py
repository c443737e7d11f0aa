"""Reads of the verification workflow: who may adjudicate, the work queue, blind reviews,
disputes, agreement and correction analytics."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth import get_user_model
from django.db.models import Avg, Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, TruncMonth

from annotations.models import (
    Image,
    ImageStatus,
    Layer,
    Project,
    Region,
    Role,
)
from annotations.selectors import CAPABILITIES, UserLike, membership_role
from core.errors import NotFoundError, PermissionDeniedError
from review.models import (
    ActiveLearningOrder,
    CorrectionKind,
    CorrectionRecord,
    Dispute,
    DisputeStatus,
    PairAgreement,
    Review,
    ReviewStatus,
    RoundStatus,
    VerificationRound,
    VerificationSettings,
)


def verification_settings_get(*, project: Project) -> VerificationSettings:
    """The project's verification settings (unsaved defaults when none were stored yet)."""
    stored = VerificationSettings.objects.filter(project=project).first()
    return stored if stored is not None else VerificationSettings(project=project)


def adjudicator_ids(*, project: Project) -> list[int]:
    """Users named as adjudicators (besides the admins, who always may adjudicate)."""
    return list(
        VerificationSettings.adjudicators.through.objects.filter(verificationsettings__project=project)
        .order_by("user_id")
        .values_list("user_id", flat=True)
    )


def may_adjudicate(*, user: UserLike, project: Project) -> bool:
    """Admins (capability ``adjudicate``) and experts named in the project's adjudicators."""
    role = membership_role(user=user, project=project)
    if role is None:
        return False
    if "adjudicate" in CAPABILITIES[role]:
        return True
    return role == Role.EXPERT and cast(int, user.pk) in adjudicator_ids(project=project)


def adjudicator_check(*, user: UserLike, project: Project) -> None:
    """403 unless ``user`` may adjudicate in ``project`` (call after the membership check)."""
    if not may_adjudicate(user=user, project=project):
        raise PermissionDeniedError("Only project admins and the project's adjudicators may adjudicate.")


def round_current(*, image: Image, region: Region | None = None) -> VerificationRound | None:
    """The latest verification round of the image as a whole (``region`` None) or of one of its
    regions, if it was ever submitted."""
    return VerificationRound.objects.filter(image_id=image.pk, region=region).order_by("-number").first()


def review_mine(*, image: Image, user: UserLike, region: Region | None = None) -> Review | None:
    """The caller's live (assigned or submitted) review of the latest round of the image (region)."""
    current = round_current(image=image, region=region)
    if current is None:
        return None
    return (
        Review.objects.filter(round=current, reviewer_id=cast(int, user.pk))
        .exclude(status=ReviewStatus.CANCELLED)
        .select_related("round", "reviewer")
        .prefetch_related("decisions", "comments")
        .first()
    )


def assignment_list(*, image: Image, region: Region | None = None) -> list[Review]:
    """Every assignment of the image's own rounds or of one region's (newest round first), without
    decisions."""
    return list(
        Review.objects.filter(image=image, round__region=region)
        .select_related("reviewer", "round", "assigned_by")
        .order_by("-round__number", "id")
    )


def reviews_visible(
    *, image: Image, user: UserLike, round_number: int | None = None, region: Region | None = None
) -> tuple[VerificationRound, list[Review]]:
    """The submitted reviews of one round of the image (or of its ``region``; default: the
    latest), if ``user`` may read them.

    Reviews are blind: an expert reads the others' reviews of a round only after submitting
    their own in that round; adjudicators and admins may, unless they have an open review of
    that round themselves. Drafts are never shown.
    """
    rounds = VerificationRound.objects.filter(image_id=image.pk, region=region).order_by("-number")
    chosen = rounds.filter(number=round_number).first() if round_number is not None else rounds.first()
    if chosen is None:
        raise NotFoundError(f"This {'image' if region is None else 'region'} has no review round.")
    own = set(
        Review.objects.filter(round=chosen, reviewer_id=cast(int, user.pk))
        .exclude(status=ReviewStatus.CANCELLED)
        .values_list("status", flat=True)
    )
    # An admin or adjudicator who reviews the image themselves is blind like any expert.
    if ReviewStatus.ASSIGNED in own or not (
        ReviewStatus.SUBMITTED in own or may_adjudicate(user=user, project=image.project)
    ):
        raise PermissionDeniedError("Reviews are blind: you may read the other reviews after submitting your own.")
    reviews = list(
        Review.objects.filter(round=chosen, status=ReviewStatus.SUBMITTED)
        .select_related("reviewer", "round")
        .prefetch_related("decisions", "comments")
        .order_by("id")
    )
    return chosen, reviews


def disputes_for_adjudication(
    *, image: Image, region: Region | None = None
) -> tuple[VerificationRound | None, list[Dispute], dict[int, str]]:
    """The disputes of the latest round of the image (or of its ``region``) and the user names
    of everyone in their versions."""
    current = round_current(image=image, region=region)
    if current is None:
        return None, [], {}
    disputes = list(current.disputes.select_related("resolved_by").order_by("id"))
    user_ids = {v.get("reviewer_id") for d in disputes for v in d.versions}
    names = dict(get_user_model().objects.filter(pk__in=[u for u in user_ids if u]).values_list("pk", "username"))
    return current, disputes, names


def _waiting_order(*, project: Project, queryset: QuerySet[Image]) -> QuerySet[Image]:
    """Images waiting for annotation in the project's active-learning order.

    ``uncertainty``: lowest mean proposal score first (images without proposals last).
    ``disagreement``: lowest past expert agreement first: the image's own mean pair F1 from
    earlier rounds (reopened images), else the mean pair F1 of its slide's other images;
    images without any history last.
    """
    order = verification_settings_get(project=project).active_learning_order
    if order == ActiveLearningOrder.UNCERTAINTY:
        return queryset.annotate(mean_score=Avg("cells__score", filter=Q(cells__layer=Layer.PROPOSAL))).order_by(
            F("mean_score").asc(nulls_last=True), "id"
        )
    if order == ActiveLearningOrder.DISAGREEMENT:
        own = (
            PairAgreement.objects.filter(image_id=OuterRef("pk"))
            .values("image_id")
            .annotate(v=Avg("f1"))
            .values("v")[:1]
        )
        slide = (
            PairAgreement.objects.filter(image__project=project, image__slide_code=OuterRef("slide_code"))
            .exclude(image__slide_code="")
            .values("image__slide_code")
            .annotate(v=Avg("f1"))
            .values("v")[:1]
        )
        return queryset.annotate(
            own_f1=Subquery(own), slide_f1=Subquery(slide), past_f1=Coalesce(Subquery(own), Subquery(slide))
        ).order_by(F("past_f1").asc(nulls_last=True), "id")
    return queryset.order_by("id")


def _waiting_reason(image: Image, order: str) -> tuple[str, float | None]:
    """Why a waiting image stands where it does in the active-learning order (its annotations
    from :func:`_waiting_order`)."""
    if order == ActiveLearningOrder.UNCERTAINTY:
        score = getattr(image, "mean_score", None)
        return ("uncertainty", float(score)) if score is not None else ("no_proposals", None)
    if order == ActiveLearningOrder.DISAGREEMENT:
        own, slide = getattr(image, "own_f1", None), getattr(image, "slide_f1", None)
        if own is not None:
            return "disagreement_image", float(own)
        if slide is not None:
            return "disagreement_slide", float(slide)
        return "no_history", None
    return "upload_order", None


def _with_reason(images: list[Any], reason: Any) -> list[Any]:
    """Sets ``queue_reason`` (``(code, value)``, docs/api.md "work queue") on each image."""
    for image in images:
        image.queue_reason = reason(image) if callable(reason) else reason
    return images


def _live_reviews() -> Q:
    """Live reviews of an image's own open round (not of its regions')."""
    return (
        ~Q(reviews__status=ReviewStatus.CANCELLED)
        & Q(reviews__round__status=RoundStatus.OPEN)
        & Q(reviews__round__region__isnull=True)
    )


def _with_region(image: Image, region: Region | None) -> Image:
    """Marks a queue entry as one region of the image (``queue_region``) rather than the image."""
    image.queue_region = region  # type: ignore[attr-defined]
    return image


def work_queue(*, user: UserLike, project: Project, limit: int = 5) -> dict[str, Any]:
    """The caller's next images: to annotate (their own images in progress first, then waiting
    images in the active-learning order), to review, to adjudicate and (admins) to assign.

    The review, adjudicate and assign lists hold whole images and slides' regions (an entry's
    ``queue_region``): a slide with two regions in review is there twice. Each list is capped at
    ``limit``; ``count`` gives the full number. A fixed number of queries.
    """
    user_id = cast(int, user.pk)
    role = membership_role(user=user, project=project)
    capabilities = CAPABILITIES[role] if role else set()
    empty: QuerySet[Image] = Image.objects.none()
    order = verification_settings_get(project=project).active_learning_order
    out: dict[str, Any] = {"order": order}

    def section(queryset: QuerySet[Image], reason: Any = None) -> dict[str, Any]:
        return {"count": queryset.count(), "images": _with_reason(list(queryset[:limit]), reason)}

    mine = project.images.filter(status=ImageStatus.ANNOTATING, annotator_id=user_id).order_by("id")
    waiting = _waiting_order(
        project=project,
        queryset=project.images.filter(status__in=[ImageStatus.NEW, ImageStatus.PRE_SEGMENTED]),
    )
    if "annotate" in capabilities:
        own = section(mine, ("in_progress", None))
        rest = section(waiting, lambda i: _waiting_reason(i, order))
        out["annotate"] = {"count": own["count"] + rest["count"], "images": (own["images"] + rest["images"])[:limit]}
    else:
        out["annotate"] = section(empty)
    reviews = (
        Review.objects.filter(reviewer_id=user_id, status=ReviewStatus.ASSIGNED, image__project=project)
        .filter(
            Q(round__region__isnull=True, image__status=ImageStatus.IN_REVIEW)
            | Q(round__region__status=ImageStatus.IN_REVIEW)
        )
        .select_related("image", "round__region")
        .order_by("created_at", "id")
    )
    out["review"] = {
        "count": reviews.count(),
        "images": _with_reason([_with_region(r.image, r.round.region) for r in reviews[:limit]], ("assigned", None)),
    }
    disputed = [ImageStatus.DISPUTED, ImageStatus.ADJUDICATION]
    if may_adjudicate(user=user, project=project):
        images = project.images.filter(status__in=disputed).order_by("updated_at", "id")
        regions = (
            Region.objects.filter(image__project=project, status__in=disputed)
            .select_related("image")
            .order_by("updated_at", "id")
        )
        listed = list(images[:limit])
        listed += [_with_region(r.image, r) for r in regions[: limit - len(listed)]] if len(listed) < limit else []
        out["adjudicate"] = {
            "count": images.count() + regions.count(),
            "images": _with_reason(listed, ("disputed", None)),
        }
    else:
        out["adjudicate"] = section(empty)
    understaffed = (
        project.images.filter(status__in=[ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW])
        .annotate(
            live=Count("reviews", filter=_live_reviews(), distinct=True),
            needed=Subquery(
                VerificationRound.objects.filter(image_id=OuterRef("pk"), status=RoundStatus.OPEN)
                .order_by("-number")
                .values("experts_required")[:1]
            ),
        )
        .filter(live__lt=F("needed"))
        .order_by("id")
    )
    if "manage" in capabilities:
        open_slots = lambda i: ("open_slots", float(i.needed - i.live))  # noqa: E731
        region_rounds = (
            VerificationRound.objects.filter(image__project=project, region__isnull=False, status=RoundStatus.OPEN)
            .annotate(live=Count("reviews", filter=~Q(reviews__status=ReviewStatus.CANCELLED), distinct=True))
            .filter(live__lt=F("experts_required"))
            .select_related("region__image")
            .order_by("id")
        )
        listed = list(understaffed[:limit])
        if len(listed) < limit:
            for r in region_rounds[: limit - len(listed)]:
                region = cast(Region, r.region)  # the query's region__isnull=False
                image = _with_region(region.image, region)
                image.live, image.needed = r.live, r.experts_required  # type: ignore[attr-defined]
                listed.append(image)
        out["assign"] = {
            "count": understaffed.count() + region_rounds.count(),
            "images": _with_reason(listed, open_slots),
        }
    else:
        out["assign"] = section(empty)
    return out


def _rate(part: int | None, whole: int | None) -> float | None:
    return None if not whole else (part or 0) / whole


def agreement_summary(*, project: Project, image: Image | None = None) -> dict[str, Any]:
    """Agreement per expert pair, per expert (over time, by month) and for the project.

    Pairs: mean F1 at IoU 0.5, mean IoU of matched cells and pixel Dice over the pair's images.
    Experts: reviews submitted, acceptance / rejection / edit rates (of the cells they decided),
    cells added, and agreement of their reviews with the verified result.
    """
    pairs = PairAgreement.objects.filter(image__project=project)
    reviews = Review.objects.filter(image__project=project, status=ReviewStatus.SUBMITTED)
    if image is not None:
        pairs, reviews = pairs.filter(image=image), reviews.filter(image=image)
    pair_rows = list(
        pairs.values("reviewer_a", "reviewer_a__username", "reviewer_b", "reviewer_b__username")
        .annotate(images=Count("image", distinct=True), f1=Avg("f1"), mean_iou=Avg("mean_iou"), dice=Avg("dice"))
        .order_by("reviewer_a", "reviewer_b")
    )
    stats = {
        "reviews": Count("id"),
        "accepted": Sum("n_accept"),
        "rejected": Sum("n_reject"),
        "edited": Sum("n_edit"),
        "added": Sum("n_add"),
        "consensus_f1": Avg("consensus_f1"),
        "consensus_mean_iou": Avg("consensus_mean_iou"),
        "consensus_dice": Avg("consensus_dice"),
    }

    def with_rates(row: dict[str, Any]) -> dict[str, Any]:
        decided = (row["accepted"] or 0) + (row["rejected"] or 0) + (row["edited"] or 0)
        return row | {
            "acceptance_rate": _rate(row["accepted"], decided),
            "rejection_rate": _rate(row["rejected"], decided),
            "edit_rate": _rate(row["edited"], decided),
        }

    expert_rows = [
        with_rates(dict(r))
        for r in reviews.values("reviewer", "reviewer__username").annotate(**stats).order_by("reviewer")
    ]
    monthly = [
        with_rates(dict(r))
        for r in reviews.annotate(month=TruncMonth("submitted_at"))
        .values("reviewer", "month")
        .annotate(**stats)
        .order_by("reviewer", "month")
    ]
    by_reviewer: dict[int, list[dict[str, Any]]] = {}
    for row in monthly:
        by_reviewer.setdefault(row["reviewer"], []).append(row)
    for row in expert_rows:
        row["by_month"] = by_reviewer.get(row["reviewer"], [])
    totals = pairs.aggregate(pairs=Count("id"), f1=Avg("f1"), mean_iou=Avg("mean_iou"), dice=Avg("dice"))
    images = project.images.all() if image is None else project.images.filter(pk=image.pk)
    status_counts = dict(images.values_list("status").annotate(n=Count("id")).order_by())
    disputes = Dispute.objects.filter(image__in=images).aggregate(
        total=Count("id"), resolved=Count("id", filter=Q(status=DisputeStatus.RESOLVED))
    )
    # Every submission starts a round. Distinct counts: the join with the disputes repeats a
    # round once per dispute.
    round_counts = VerificationRound.objects.filter(image__in=images).aggregate(
        rounds=Count("id", distinct=True),
        done=Count("id", filter=~Q(status=RoundStatus.OPEN), distinct=True),
        with_disputes=Count("id", filter=Q(disputes__isnull=False), distinct=True),
    )
    return {
        "summary": {
            "images": sum(status_counts.values()),
            "status_counts": status_counts,
            "verified_images": status_counts.get(ImageStatus.VERIFIED, 0),
            "rounds": round_counts["rounds"],
            "rounds_done": round_counts["done"],
            "rounds_with_disputes": round_counts["with_disputes"],
            "disputes": disputes["total"],
            "disputes_resolved": disputes["resolved"],
            "pairs": totals["pairs"],
            "f1": totals["f1"],
            "mean_iou": totals["mean_iou"],
            "dice": totals["dice"],
        },
        "pairs": pair_rows,
        "experts": expert_rows,
        "per_image": list(
            pairs.values("image", "image__file_name", "image__status")
            .annotate(pairs=Count("id"), f1=Avg("f1"), mean_iou=Avg("mean_iou"), dice=Avg("dice"))
            .order_by("f1", "image")
        ),
    }


def corrections_summary(*, project: Project, image: Image | None = None) -> dict[str, Any]:
    """How verified cells relate to model proposals, per model version (correction analytics).

    Per version: cells kept as proposed, edited (with the mean IoU of the edited cells to their
    proposals), added by a human, proposals deleted (rejected by the annotator or dropped in
    verification) and ignored (never acted upon). ``kept_rate`` = kept / (kept + edited +
    deleted); ``proposal_precision`` = (kept + edited) / (kept + edited + deleted), the share of
    acted-on proposals that survived; ``proposal_recall`` = (kept + edited) / (kept + edited +
    added), the share of verified cells the model had proposed.
    """
    records = CorrectionRecord.objects.filter(image__project=project)
    if image is not None:
        records = records.filter(image=image)
    kinds = {kind: Count("id", filter=Q(kind=kind)) for kind in CorrectionKind.values}
    rows: list[dict[str, Any]] = [
        dict(r)
        for r in records.values("model_version", "model_version__kind", "model_version__number", "model_version__name")
        .annotate(images=Count("image", distinct=True), edited_mean_iou=Avg("iou", filter=Q(kind="edited")), **kinds)
        .order_by("model_version")
    ]
    for row in rows:
        judged = row["kept"] + row["edited"] + row["deleted"]
        row["kept_rate"] = _rate(row["kept"], judged)
        row["proposal_precision"] = _rate(row["kept"] + row["edited"], judged)
        row["proposal_recall"] = _rate(row["kept"] + row["edited"], row["kept"] + row["edited"] + row["added"])
    totals = records.aggregate(images=Count("image", distinct=True), **kinds)
    return {"model_versions": rows, "totals": totals}
