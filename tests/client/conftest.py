"""The Python client (``client/cytoclient``) and its ``cyto`` command line against the real server:
pytest-django's ``live_server`` (a threaded WSGI server on the test database, whose data the tests
commit: transactional tests), with API tokens as a script user has them.

This clone's ``client/`` goes first on ``sys.path`` (and on the command line's ``PYTHONPATH``), so
the tests exercise the code beside them even where the shared virtual environment has another
clone's copy installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "client"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))

import cytoclient  # noqa: E402 - after the path above

assert Path(cytoclient.__file__).resolve().is_relative_to(CLIENT_DIR), cytoclient.__file__


@pytest.fixture(autouse=True)
def _client_settings(request: pytest.FixtureRequest) -> None:
    if "live_server" not in request.fixturenames:
        return
    settings = request.getfixturevalue("settings")
    # The live server speaks plain HTTP: cookies marked Secure would never come back (login).
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    # Several users per test: the production password hasher costs a quarter second each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Account:
    """A user with an API token, as a script user has one."""

    user: Any
    token: str


def account_for(user: Any, *, project: Any = None) -> Account:
    from annotations.services.tokens import api_token_create

    _, raw = api_token_create(user=user, name="script", project=project)
    return Account(user=user, token=raw)


@pytest.fixture
def project(transactional_db: Any) -> Any:
    from tests.factories import ProjectFactory, UserFactory

    return ProjectFactory(name="Thyroid FNA", created_by=UserFactory(username="dr.head"))


@pytest.fixture
def admin(project: Any) -> Account:
    from annotations.models import Role

    return account_for(project.memberships.get(role=Role.ADMIN).user)


@pytest.fixture
def cyto(live_server: Any, admin: Account) -> Any:
    """A client for the live server with the project admin's token."""
    client = cytoclient.Client(live_server.url, admin.token)
    yield client
    client.close()


def image_folder(folder: Path, count: int, *, seed: int = 0, size: tuple[int, int] = (64, 48)) -> Path:
    """``count`` distinct PNG files (and a file that is no image, which uploads skip)."""
    from tests.factories import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"field-{seed + index:03d}.png").write_bytes(png_bytes(*size, seed=seed + index))
    (folder / "notes.txt").write_text("not an image")
    return folder


def square(x: float, y: float, size: float = 10) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size]]


# A small whole slide (issue #14): 1024 x 768 pixels, tiled because its side exceeds the test's
# TILED_MIN_SIDE, with a pyramid of 256 px tiles (levels 0 .. 10; 4 x 3 tiles at full size).
SLIDE_WIDTH, SLIDE_HEIGHT = 1024, 768


@pytest.fixture
def tiled_settings(settings: Any) -> Any:
    settings.TILED_MIN_SIDE = 512
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # a slide upload lands in a temporary file, as a real one
    settings.PRESEGMENT_TILE_SIZE = 256
    settings.PRESEGMENT_TILE_MARGIN = 64
    settings.PRESEGMENT_TILES_PER_TASK = 4
    return settings


@pytest.fixture(scope="session")
def slide() -> Any:
    from cytoseg.slide_synthetic import slide_synthetic

    return slide_synthetic(
        width=SLIDE_WIDTH, height=SLIDE_HEIGHT, field_width=512, field_height=384, distinct=2, seed=7
    )


@pytest.fixture
def slide_image(cyto: Any, project: Any, slide: Any, tiled_settings: Any, tmp_path: Path) -> Any:
    """The slide uploaded through the client as a pyramidal TIFF, its pyramid built (as the worker
    would; the broker is not used), read back: a ``cytoclient.Image`` with ``tiles``."""
    from unittest import mock

    from annotations.services.slides import image_pyramid_build
    from cytoseg.slide_synthetic import slide_write

    folder = tmp_path / "slide-in"
    folder.mkdir()
    path = slide_write(slide, folder / "slide.tif", kind="pyramidal-tiff", quality=95)
    with mock.patch("core.queue.task_send"):
        uploaded = cyto.images.upload(project.pk, path).images[0]
    assert uploaded.tiled and uploaded.tile_status == "queued" and uploaded.tiles is None
    assert "levels" in image_pyramid_build(image_id=uploaded.id)
    return cyto.images.get(uploaded.id)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(live_server: Any, admin: Account, tmp_path: Path) -> Callable[..., CliResult]:
    """Run ``python -m cytoclient ARGS`` as a script would, with ``CYTO_URL``/``CYTO_TOKEN`` set
    (``env`` adds to or, with None values, removes from the environment). The process has a home
    of its own, so no real settings file is ever read."""
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, env: dict[str, str | None] | None = None, stdin: str | None = None) -> CliResult:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CYTO_")}
        environ |= {
            "PYTHONPATH": str(CLIENT_DIR),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "CYTO_URL": live_server.url,
            "CYTO_TOKEN": admin.token,
        }
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        completed = subprocess.run(
            [sys.executable, "-m", "cytoclient", *args],
            cwd=tmp_path,
            env=environ,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            # no controlling terminal: getpass reads the password from stdin, never a developer's tty
            start_new_session=True,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run
