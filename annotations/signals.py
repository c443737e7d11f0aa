"""What the annotations app announces to the apps above it, which it must not import.

- ``images_uploaded(project, images)``: sent when new images are stored, after the transaction
  commits (the inference app pre-segments them when the project asks for it).
- ``membership_changed(project, user)``: sent inside the transaction that changed or removed a
  member's role (the review app gives up reviews the member may no longer write).
"""

from django.dispatch import Signal

images_uploaded = Signal()
membership_changed = Signal()
