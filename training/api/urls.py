from django.urls import path

from training.api import views

urlpatterns = [
    path("projects/<int:project_id>/training/jobs", views.ProjectJobsView.as_view(), name="jobs"),
    path("training/jobs/<int:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("training/jobs/<int:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("projects/<int:project_id>/training/snapshots", views.ProjectSnapshotsView.as_view(), name="snapshots"),
    path("training/snapshots/<int:snapshot_id>", views.SnapshotDetailView.as_view(), name="snapshot-detail"),
    path(
        "training/snapshots/<int:snapshot_id>/download/<str:layout>",
        views.SnapshotDownloadView.as_view(),
        name="snapshot-download",
    ),
    path("projects/<int:project_id>/training/completion", views.ProjectCompletionView.as_view(), name="completion"),
    path("projects/<int:project_id>/training/models", views.ProjectRegistryView.as_view(), name="registry"),
    path("projects/<int:project_id>/models", views.ModelVersionListView.as_view(), name="model-versions"),
    path("training/models/<int:version_id>", views.ModelDetailView.as_view(), name="model-detail"),
    path("training/models/<int:version_id>/promote", views.ModelPromoteView.as_view(), name="model-promote"),
    path("training/models/<int:version_id>/gate", views.ModelGateView.as_view(), name="model-gate"),
    path("training/models/<int:version_id>/evaluate", views.ModelEvaluateView.as_view(), name="model-evaluate"),
    path("projects/<int:project_id>/training/rollback", views.ProjectRollbackView.as_view(), name="rollback"),
    path("projects/<int:project_id>/training/schedule", views.ProjectScheduleView.as_view(), name="schedule"),
]
