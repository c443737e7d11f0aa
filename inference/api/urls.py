from django.urls import path

from inference.api import views

urlpatterns = [
    path("images/<int:image_id>/presegment", views.ImagePresegmentView.as_view(), name="image-presegment"),
    path("projects/<int:project_id>/presegment", views.ProjectPresegmentView.as_view(), name="project-presegment"),
    path("images/<int:image_id>/proposals/accept", views.ProposalAcceptView.as_view(), name="proposals-accept"),
    path("images/<int:image_id>/proposals/reject", views.ProposalRejectView.as_view(), name="proposals-reject"),
    path("images/<int:image_id>/segment/click", views.SegmentClickView.as_view(), name="segment-click"),
    path("images/<int:image_id>/segment/box", views.SegmentBoxView.as_view(), name="segment-box"),
    path("admin/queue", views.AdminQueueView.as_view(), name="admin-queue"),
]
