"""Exports and the COCO import, one module per concern."""
