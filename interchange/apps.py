from django.apps import AppConfig


class InterchangeConfig(AppConfig):
    """Exports (COCO, COCO zip, QuPath GeoJSON, nnU-Net and Cellpose datasets), export jobs and
    COCO import."""

    name = "interchange"
    verbose_name = "Exports and imports"
