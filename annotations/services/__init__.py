"""Writes of the annotations app, one module per concern (projects, tokens, images, cells, the
image lifecycle, the audit log)."""
