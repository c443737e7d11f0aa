"""The client's own rules, without a server: error answers, Bethesda categories, the settings
file, the version rule, the progress bar."""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import pytest
from cytoclient import (
    CompatibilityWarning,
    ConflictError,
    IncompatibleServerError,
    NotFoundError,
    Progress,
    ProgressBar,
    ServerError,
    ThrottledError,
    TileGrid,
    UnavailableError,
    ValidationError,
    bethesda_category,
    check_compatibility,
)
from cytoclient._transport import api_root
from cytoclient.config import InsecureConfigError, config_read, config_write, settings_resolve
from cytoclient.errors import ApiError, ConfigurationError, error_from_response, flatten_errors


def test_error_answers_become_their_exception() -> None:
    invalid = error_from_response(
        400,
        {
            "detail": "Invalid input.",
            "errors": {"classes": [{}, {"name": ["This field is required."]}], "cells": {"3": ["bad"]}},
        },
    )
    assert isinstance(invalid, ValidationError)
    assert invalid.errors == {"classes.1.name": "This field is required.", "cells.3": "bad"}
    assert invalid.field == "classes.1.name" and invalid.raw_errors["cells"] == {"3": ["bad"]}
    assert str(invalid).startswith("400 Invalid input.: classes.1.name: This field is required.")

    conflict = error_from_response(
        409,
        {
            "detail": "stale",
            "revision": 7,
            "cells": [
                {"id": 1, "class_id": 2, "polygon": [[0, 0], [1, 0], [1, 1]], "layer": "annotation", "source": "manual"}
            ],
        },
    )
    assert isinstance(conflict, ConflictError) and conflict.revision == 7
    assert conflict.cells is not None and conflict.cells[0].class_id == 2
    locked = error_from_response(409, {"detail": "locked", "status": "submitted", "allowed_actions": []})
    assert isinstance(locked, ConflictError) and locked.status == "submitted" and locked.cells is None

    throttled = error_from_response(429, {"detail": "slow down"}, headers={"Retry-After": "12"})
    assert isinstance(throttled, ThrottledError) and throttled.retry_after == 12
    assert isinstance(error_from_response(404, {"detail": "No such image."}), NotFoundError)
    stale_delta = error_from_response(
        409,
        {
            "detail": "1 of your edits meet edits saved meanwhile",
            "revision": 9,
            "conflicts": [{"item": "changed.0", "id": 4, "reason": "changed", "revision": 8}],
            "cells": [],
            "deleted": [5],
        },
    )
    assert isinstance(stale_delta, ConflictError) and stale_delta.revision == 9 and stale_delta.deleted == [5]
    assert stale_delta.conflicts is not None and stale_delta.conflicts[0].item == "changed.0"
    assert stale_delta.conflicts[0].reason == "changed" and stale_delta.conflicts[0].revision == 8
    assert conflict.conflicts is None and conflict.deleted is None  # a whole-layer save's 409 has neither
    server = error_from_response(502, "<html>Bad gateway</html>")
    assert isinstance(server, ServerError) and server.detail == "<html>Bad gateway</html>"
    busy = error_from_response(503, {"detail": "computing"}, headers={"Retry-After": "2"})
    assert isinstance(busy, UnavailableError) and isinstance(busy, ServerError) and busy.retry_after == 2
    odd = error_from_response(418, {})
    assert type(odd) is ApiError and odd.detail == "HTTP 418"
    assert flatten_errors(["one", "two"]) == {"non_field_errors": "one; two"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [("IV", "IV"), ("iv", "IV"), ("4", "IV"), (4, "IV"), ("B4", "IV"), ("Bethesda VI", "VI"), ("", ""), (None, None)],
)
def test_bethesda_categories(given: object, expected: str | None) -> None:
    assert bethesda_category(given) == expected  # type: ignore[arg-type]


def test_bethesda_category_refuses_others() -> None:
    for bad in ("VII", "7", "B0", "benign"):
        with pytest.raises(ValueError, match="not a Bethesda category"):
            bethesda_category(bad)


def test_api_root() -> None:
    for url in ("https://cyto.example.org", "https://cyto.example.org/", "https://cyto.example.org/api/v1/"):
        assert api_root(url) == "https://cyto.example.org/api/v1/"
    with pytest.raises(ValueError):
        api_root("cyto.example.org")


def test_version_rule() -> None:
    assert check_compatibility("1.0.0", "1.0.0") == "same"
    assert check_compatibility("1.4.0", "1.0.0") == "newer server"
    with pytest.warns(CompatibilityWarning):
        assert check_compatibility("1.0.3", "1.2.0") == "older server"
    with pytest.raises(IncompatibleServerError):
        check_compatibility("2.0.0", "1.9.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatibility("1.0.9", "1.0.0")  # patch numbers never matter


def test_settings_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "deep" / "cyto" / "config.toml"
    old = os.umask(0o002)  # a permissive umask must not leak into the file's mode
    try:
        config_write("https://cyto.example.org", 'cyt_"quoted"\\token', path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config_read(path) == {"url": "https://cyto.example.org", "token": 'cyt_"quoted"\\token'}
    path.chmod(0o604)
    with pytest.raises(InsecureConfigError, match="chmod 600"):
        config_read(path)
    path.chmod(0o600)

    for name in ("CYTO_URL", "CYTO_TOKEN", "CYTO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert settings_resolve(path=path).token == 'cyt_"quoted"\\token'
    monkeypatch.setenv("CYTO_TOKEN", "cyt_env")
    assert (
        settings_resolve(path=path).token == "cyt_env" and settings_resolve(path=path).url == "https://cyto.example.org"
    )
    assert settings_resolve("https://other", "cyt_arg", path=path).token == "cyt_arg"
    with pytest.raises(ConfigurationError, match="no server URL"):
        settings_resolve(path=tmp_path / "missing.toml")


def test_progress_bar_without_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    for done in range(0, 101, 5):
        bar(Progress("upload", done, 100, "B"))
    lines = stream.getvalue().splitlines()
    assert 5 <= len(lines) <= 12 and lines[-1].startswith("upload") and "100%" in lines[-1]
    assert "\r" not in stream.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "tile_size"), [(1, 1, 256), (1024, 768, 256), (5000, 333, 254), (257, 4097, 512)]
)
def test_tile_grid_is_the_servers_geometry(width: int, height: int, tile_size: int) -> None:
    from cytoseg.tiles import TileGeometry

    server = TileGeometry(width, height, tile_size)
    grid = TileGrid(width=width, height=height, tile_size=tile_size, levels=server.levels)
    for level in range(server.levels):
        assert grid.scale(level) == server.scale(level) and grid.level_size(level) == server.level_size(level)
        assert grid.tile_counts(level) == server.tile_counts(level)
        cols, rows = server.tile_counts(level)
        assert len(grid.tiles(level)) == cols * rows
        for col, row in grid.tiles(level):
            assert grid.tile_box_full(level, col, row) == server.tile_box_full(level, col, row)
        assert not grid.has_tile(level, cols, 0) and not grid.has_tile(level, 0, rows)
    with pytest.raises(ValueError, match="level"):
        grid.level_size(server.levels)


def test_output_piped_into_a_reader_that_leaves_ends_quietly() -> None:
    """``cyto ... | head``: the reader closes the pipe after a line; the command stops with
    128 + SIGPIPE and no traceback (Python's default printed one, twice)."""
    import subprocess
    import sys

    script = (
        "import argparse, sys\n"
        "from cytoclient import cli\n"
        "def handler(args, out):\n"
        "    for _ in range(200000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "real = cli.build_parser\n"
        "def build():\n"
        "    parser = real()\n"
        "    parser.parse_args = lambda argv=None: argparse.Namespace(handler=handler, json=False, quiet=False)\n"
        "    return parser\n"
        "cli.build_parser = build\n"
        "sys.exit(cli.main([]))\n"
    )
    client_dir = Path(__file__).resolve().parents[2] / "client"
    env = {**os.environ, "PYTHONPATH": str(client_dir)}
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"x" * 100 + b"\n"
        process.stdout.close()  # what head does after its line
        stderr = process.stderr.read().decode()
        assert process.wait(60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
