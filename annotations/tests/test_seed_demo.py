from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from annotations.models import Image, Project


@pytest.mark.django_db
def test_seed_demo_creates_project_users_and_images(settings: Any) -> None:
    settings.DEBUG = True
    out = io.StringIO()
    call_command("seed_demo", "--images", "2", "--width", "256", "--height", "192", stdout=out)
    project = Project.objects.get()
    names = sorted(Image.objects.filter(project=project).values_list("file_name", flat=True))
    assert names == ["skimage-ihc.png", "synthetic-01.png", "synthetic-02.png"]
    assert {m.user.username: m.role for m in project.memberships.select_related("user")} == {
        "admin": "admin",
        "doctor": "annotator",
        "expert1": "expert",
        "expert2": "expert",
    }
    printed = out.getvalue()
    password = next(line.split()[1] for line in printed.splitlines() if line.strip().startswith("doctor"))
    assert get_user_model().objects.get(username="doctor").check_password(password)
    # A second run keeps the images and issues new passwords.
    call_command("seed_demo", "--images", "2", "--width", "256", "--height", "192", stdout=io.StringIO())
    assert Image.objects.count() == 3
    assert not get_user_model().objects.get(username="doctor").check_password(password)


@pytest.mark.django_db
def test_seed_demo_refuses_without_debug(settings: Any) -> None:
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("seed_demo", stdout=io.StringIO())
    assert not get_user_model().objects.filter(username="doctor").exists()
