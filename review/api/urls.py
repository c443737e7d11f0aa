from django.urls import path

from review.api import views as v

# The verification workflow (URLs unchanged when the app was split out of annotations).
urlpatterns = [
    path("images/<int:image_id>/transition", v.TransitionView.as_view(), name="image-transition"),
    path("images/<int:image_id>/assignments", v.AssignmentsView.as_view(), name="image-assignments"),
    path(
        "images/<int:image_id>/assignments/<int:review_id>",
        v.AssignmentDetailView.as_view(),
        name="image-assignment",
    ),
    path("images/<int:image_id>/reviews", v.ReviewsView.as_view(), name="image-reviews"),
    path("images/<int:image_id>/reviews/mine", v.MyReviewView.as_view(), name="image-review-mine"),
    path("images/<int:image_id>/reviews/mine/submit", v.MyReviewSubmitView.as_view(), name="image-review-submit"),
    path("images/<int:image_id>/adjudication", v.AdjudicationView.as_view(), name="image-adjudication"),
    path("images/<int:image_id>/agreement", v.ImageAgreementView.as_view(), name="image-agreement"),
    # A slide's region: the same reviews, on the region's own round (issue #14).
    path(
        "images/<int:image_id>/regions/<int:region_id>/transition",
        v.RegionTransitionView.as_view(),
        name="region-transition",
    ),
    path(
        "images/<int:image_id>/regions/<int:region_id>/assignments",
        v.AssignmentsView.as_view(),
        name="region-assignments",
    ),
    path("images/<int:image_id>/regions/<int:region_id>/reviews", v.ReviewsView.as_view(), name="region-reviews"),
    path(
        "images/<int:image_id>/regions/<int:region_id>/reviews/mine",
        v.MyReviewView.as_view(),
        name="region-review-mine",
    ),
    path(
        "images/<int:image_id>/regions/<int:region_id>/reviews/mine/submit",
        v.MyReviewSubmitView.as_view(),
        name="region-review-submit",
    ),
    path(
        "images/<int:image_id>/regions/<int:region_id>/adjudication",
        v.AdjudicationView.as_view(),
        name="region-adjudication",
    ),
    path("me/queue", v.QueueView.as_view(), name="work-queue"),
    path("projects/<int:project_id>/verification", v.VerificationSettingsView.as_view(), name="verification-settings"),
    path("projects/<int:project_id>/agreement", v.ProjectAgreementView.as_view(), name="project-agreement"),
    path("projects/<int:project_id>/corrections", v.CorrectionsView.as_view(), name="project-corrections"),
]
