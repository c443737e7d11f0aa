from django.urls import path

from annotations.api import export_views, verification_views, views

urlpatterns = [
    path("auth/login", views.LoginView.as_view(), name="login"),
    path("auth/logout", views.LogoutView.as_view(), name="logout"),
    path("auth/me", views.MeView.as_view(), name="me"),
    path("auth/tokens", views.TokenListView.as_view(), name="tokens"),
    path("auth/tokens/<int:token_id>", views.TokenDetailView.as_view(), name="token-detail"),
    path("projects", views.ProjectListView.as_view(), name="projects"),
    path("projects/<int:project_id>", views.ProjectDetailView.as_view(), name="project-detail"),
    path("projects/<int:project_id>/members", views.MemberListView.as_view(), name="members"),
    path(
        "projects/<int:project_id>/members/<int:membership_id>", views.MemberDetailView.as_view(), name="member-detail"
    ),
    path("projects/<int:project_id>/classes", views.ClassListView.as_view(), name="classes"),
    path("projects/<int:project_id>/classes/<int:class_id>", views.ClassDetailView.as_view(), name="class-detail"),
    path("projects/<int:project_id>/audit", views.AuditListView.as_view(), name="audit"),
    path("projects/<int:project_id>/images", views.ImageListView.as_view(), name="images"),
    path("images/<int:image_id>", views.ImageDetailView.as_view(), name="image-detail"),
    path("images/<int:image_id>/file", views.ImageFileView.as_view(), name="image-file"),
    path("images/<int:image_id>/cells", views.CellsView.as_view(), name="cells"),
    path("images/<int:image_id>/history", views.HistoryView.as_view(), name="history"),
    path("images/<int:image_id>/history/<int:revision>/restore", views.RestoreView.as_view(), name="restore"),
]

# Exports and the COCO import (annotations.api.export_views).
urlpatterns += [
    path("projects/<int:project_id>/export/coco", export_views.CocoExportView.as_view(), name="export-coco"),
    path("projects/<int:project_id>/export/coco-zip", export_views.CocoZipExportView.as_view(), name="export-coco-zip"),
    path("projects/<int:project_id>/export/geojson", export_views.GeoJsonExportView.as_view(), name="export-geojson"),
    path("projects/<int:project_id>/export/nnunet", export_views.NnUNetExportView.as_view(), name="export-nnunet"),
    path(
        "projects/<int:project_id>/export/cellpose", export_views.CellposeExportView.as_view(), name="export-cellpose"
    ),
    path("projects/<int:project_id>/export/jobs", export_views.ExportJobListView.as_view(), name="export-jobs"),
    path(
        "projects/<int:project_id>/export/jobs/<int:job_id>",
        export_views.ExportJobDetailView.as_view(),
        name="export-job",
    ),
    path(
        "projects/<int:project_id>/export/jobs/<int:job_id>/download",
        export_views.ExportJobDownloadView.as_view(),
        name="export-job-download",
    ),
    path("projects/<int:project_id>/import/coco", export_views.CocoImportView.as_view(), name="import-coco"),
]

# Verification workflow (annotations.api.verification_views).
v = verification_views
urlpatterns += [
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
    path("me/queue", v.QueueView.as_view(), name="work-queue"),
    path("projects/<int:project_id>/verification", v.VerificationSettingsView.as_view(), name="verification-settings"),
    path("projects/<int:project_id>/agreement", v.ProjectAgreementView.as_view(), name="project-agreement"),
    path("projects/<int:project_id>/corrections", v.CorrectionsView.as_view(), name="project-corrections"),
]
