"""Seed the demo project: synthetic Diff-Quik fields, one real microscopy image, demo users.

Demo users exist only with DEBUG on. Their passwords are generated at every run and printed;
nothing secret is committed. Re-running keeps existing images and only resets the passwords.
"""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from PIL import Image as PILImage

from annotations.models import Project, ProjectMembership, Role
from annotations.services import images as image_services
from annotations.services import projects
from cytoseg.synthetic import generate_field

DEMO_PROJECT = "Demo: Diff-Quik thyroid cytology"
DEMO_USERS = (
    ("admin", Role.ADMIN, True),
    ("doctor", Role.ANNOTATOR, False),
    ("expert1", Role.EXPERT, False),
    ("expert2", Role.EXPERT, False),
)
BETHESDA = ("IV", "V", "VI")


def _png(array: np.ndarray, name: str) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


class Command(BaseCommand):
    help = "Create the demo project, images and users (DEBUG only) and print the logins."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--images", type=int, default=12, help="Number of synthetic fields.")
        parser.add_argument("--width", type=int, default=1024)
        parser.add_argument("--height", type=int, default=768)

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("Refusing to create demo users with DEBUG off.")
        if not 1 <= options["images"] <= 200:
            raise CommandError("--images must be from 1 to 200.")
        user_model = get_user_model()
        passwords: dict[str, str] = {}
        with transaction.atomic():
            users = {}
            for username, _role, is_admin in DEMO_USERS:
                user, _ = user_model.objects.get_or_create(username=username)
                password = secrets.token_urlsafe(9)
                user.set_password(password)
                user.is_staff = is_admin
                user.is_superuser = is_admin
                user.save()
                users[username] = user
                passwords[username] = password
            project = Project.objects.filter(name=DEMO_PROJECT).first()
            created = project is None
            if project is None:
                project = projects.project_create(
                    name=DEMO_PROJECT,
                    created_by=users["admin"],
                    description="Synthetic Diff-Quik-like fields and scikit-image's IHC sample image.",
                )
            for username, role, _ in DEMO_USERS:
                ProjectMembership.objects.update_or_create(
                    project=project, user=users[username], defaults={"role": role}
                )
        if created:
            self._seed_images(project, users["admin"], options)
        self.stdout.write(self.style.SUCCESS(f"Demo project #{project.pk}: {DEMO_PROJECT}"))
        self.stdout.write("Demo logins (generated for this run):")
        for username, role, _ in DEMO_USERS:
            self.stdout.write(f"  {username:<8} {passwords[username]:<14} ({role})")

    def _seed_images(self, project: Project, admin: Any, options: dict[str, Any]) -> None:
        from skimage import data as skdata

        for index in range(options["images"]):
            field = generate_field(seed=1000 + index, width=options["width"], height=options["height"])
            with transaction.atomic():
                image_services.image_upload_many(
                    project=project,
                    files=[_png(field.image, f"synthetic-{index + 1:02d}.png")],
                    metadata={
                        "bethesda": BETHESDA[index % 3],
                        "slide_code": f"DEMO-{index // 4 + 1:02d}",
                        "magnification": "20x",
                    },
                    uploaded_by=admin,
                )
        with transaction.atomic():
            image_services.image_upload_many(
                project=project,
                files=[_png(skdata.immunohistochemistry(), "skimage-ihc.png")],
                metadata={"stain": "IHC (scikit-image sample)", "slide_code": "SKIMAGE"},
                uploaded_by=admin,
            )
