from django.urls import path

from interchange.api import views

# Exports, the COCO import (URLs unchanged when the app was split out of annotations) and the
# GeoJSON import into one image.
urlpatterns = [
    path("projects/<int:project_id>/export/coco", views.CocoExportView.as_view(), name="export-coco"),
    path("projects/<int:project_id>/export/coco-zip", views.CocoZipExportView.as_view(), name="export-coco-zip"),
    path("projects/<int:project_id>/export/geojson", views.GeoJsonExportView.as_view(), name="export-geojson"),
    path("projects/<int:project_id>/export/nnunet", views.NnUNetExportView.as_view(), name="export-nnunet"),
    path("projects/<int:project_id>/export/cellpose", views.CellposeExportView.as_view(), name="export-cellpose"),
    path("projects/<int:project_id>/export/jobs", views.ExportJobListView.as_view(), name="export-jobs"),
    path(
        "projects/<int:project_id>/export/jobs/<int:job_id>",
        views.ExportJobDetailView.as_view(),
        name="export-job",
    ),
    path(
        "projects/<int:project_id>/export/jobs/<int:job_id>/download",
        views.ExportJobDownloadView.as_view(),
        name="export-job-download",
    ),
    path("projects/<int:project_id>/import/coco", views.CocoImportView.as_view(), name="import-coco"),
    path("images/<int:image_id>/import/geojson", views.GeoJsonImportView.as_view(), name="import-geojson"),
]
