from django.urls import path

from annotations.api import views

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
    path("images/<int:image_id>/tiles/<int:level>/<str:tile>", views.ImageTileView.as_view(), name="image-tile"),
    path("images/<int:image_id>/cells", views.CellsView.as_view(), name="cells"),
    path("images/<int:image_id>/history", views.HistoryView.as_view(), name="history"),
    path("images/<int:image_id>/regions", views.RegionsView.as_view(), name="regions"),
    path("images/<int:image_id>/regions/<int:region_id>", views.RegionDetailView.as_view(), name="region-detail"),
    path("images/<int:image_id>/history/<int:revision>", views.RevisionView.as_view(), name="revision"),
    path("images/<int:image_id>/history/<int:revision>/restore", views.RestoreView.as_view(), name="restore"),
]
