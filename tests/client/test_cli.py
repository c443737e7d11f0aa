"""``cyto`` as a script runs it: ``python -m cytoclient ...`` in a process of its own, with
``CYTO_URL``/``CYTO_TOKEN`` or the settings file ``cyto login`` writes, against the live server."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from annotations.models import Cell, Image, Role
from annotations.services.cells import cells_replace
from tests.client.conftest import Account, CliResult, account_for, image_folder, square
from tests.factories import ProjectFactory, member

pytestmark = pytest.mark.django_db(transaction=True)

Run = Callable[..., CliResult]


def test_projects_upload_export_and_import(run_cli: Run, project: Any, admin: Account, tmp_path: Path) -> None:
    listed = run_cli("projects", "list")
    assert listed.code == 0, listed.stderr
    assert "Thyroid FNA" in listed.stdout and "admin" in listed.stdout
    as_json = run_cli("projects", "list", "--json")
    assert [p["name"] for p in json.loads(as_json.stdout)] == ["Thyroid FNA"]

    folder = image_folder(tmp_path / "slide", 3)
    upload = run_cli(
        "upload", str(folder), "--project", str(project.pk), "--bethesda", "B4", "--stain", "Diff-Quik",
        "--magnification", "40x", "--slide", "S-12", "--split", "validation", "--batch-size", "2",
    )  # fmt: skip
    assert upload.code == 0, upload.stderr
    assert "Uploaded 3 images" in upload.stdout
    assert "upload" in upload.stderr and "100%" in upload.stderr  # the progress lines (no terminal here)
    images = list(Image.objects.filter(project=project).order_by("file_name"))
    assert [i.file_name for i in images] == ["field-000.png", "field-001.png", "field-002.png"]
    assert {(i.bethesda, i.stain, i.magnification, i.slide_code, i.split) for i in images} == {
        ("IV", "Diff-Quik", "40x", "S-12", "validation")
    }
    again = run_cli("upload", str(folder), "--project", str(project.pk), "-q")
    assert again.code == 0 and "Uploaded 0 images" in again.stdout and "skipped 3" in again.stdout
    assert again.stderr == ""

    cell_class = project.classes.get(name="thyroid cell")
    for image in images[:2]:
        cells_replace(
            image=image, user=admin.user, base_revision=0, cells=[{"class_id": cell_class.pk, "polygon": square(5, 5)}]
        )
    out = tmp_path / "exports" / "coco.json"
    export = run_cli("export", "coco", "--project", str(project.pk), "--layer", "annotation", "-o", str(out))
    assert export.code == 0, export.stderr
    assert f"Wrote {out}" in export.stdout
    coco = json.loads(out.read_text())
    assert len(coco["annotations"]) == 2 and {i["file_name"] for i in coco["images"]} == {
        "field-000.png",
        "field-001.png",
    }

    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.glob("*.png")):
            handle.write(path, path.name)
    target = ProjectFactory(name="Second site", created_by=admin.user)
    dry = run_cli("import", "coco", str(out), "--project", str(target.pk), "--images", str(archive), "--dry-run")
    assert dry.code == 0, dry.stderr
    assert "Would import 2 cells" in dry.stdout and Image.objects.filter(project=target).count() == 0
    imported = run_cli("import", "coco", str(out), "--project", str(target.pk), "--images", str(archive), "--json")
    assert imported.code == 0, imported.stderr
    assert json.loads(imported.stdout)["cells"] == 2
    assert Cell.objects.filter(image__project=target, layer="annotation").count() == 2


def test_import_geojson(run_cli: Run, project: Any, admin: Account, tmp_path: Path) -> None:
    from tests.factories import image_create

    image = image_create(project, seed=3)
    outline = [[5, 5], [15, 5], [15, 15], [5, 15], [5, 5]]
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outline]},
             "properties": {"objectType": "detection", "classification": {"name": "Tumor"}}},
        ],
    }  # fmt: skip
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(collection))
    imported = run_cli(
        "import", "geojson", str(path), "--image", str(image.pk), "--class-map", '{"Tumor": "thyroid cell"}'
    )
    assert imported.code == 0, imported.stderr
    assert f"Imported 1 cells from 1 features into image {image.pk} (revision 1); thyroid cell: 1" in imported.stdout
    assert Cell.objects.filter(image=image, layer="annotation").count() == 1

    unknown = run_cli("import", "geojson", str(path), "--image", str(image.pk), "--dry-run")
    assert unknown.code == 1
    assert "(HTTP 400)" in unknown.stderr and "\n  features.0" in unknown.stderr


def test_server_errors_exit_non_zero_with_the_servers_message(run_cli: Run, project: Any, tmp_path: Path) -> None:
    missing = run_cli("export", "coco", "--project", "999999", "-o", str(tmp_path / "x.json"))
    assert missing.code == 1
    assert missing.stderr == "error: 404 No such project.\n"  # the server's message
    assert not (tmp_path / "x.json").exists()

    (tmp_path / "bad.json").write_text('{"images": [], "annotations": [{"id": 1}], "categories": []}')
    invalid = run_cli("import", "coco", str(tmp_path / "bad.json"), "--project", str(project.pk))
    assert invalid.code == 1
    assert "error:" in invalid.stderr and "(HTTP 400)" in invalid.stderr
    assert "\n  annotations" in invalid.stderr  # each field the server named, on its own line

    annotator = account_for(member(project, Role.ANNOTATOR, username="dr.kim"))
    denied = run_cli(
        "models", "rollback", "--project", str(project.pk), "--kind", "cellpose", env={"CYTO_TOKEN": annotator.token}
    )
    assert denied.code == 1 and "error: 403 " in denied.stderr

    wrong_token = run_cli("projects", "list", env={"CYTO_TOKEN": "cyt_not-a-token"})
    assert wrong_token.code == 1 and "error: 401 " in wrong_token.stderr

    unreachable = run_cli("projects", "list", env={"CYTO_URL": "http://127.0.0.1:9"})
    assert unreachable.code == 4 and "cannot reach" in unreachable.stderr

    usage = run_cli("upload", str(tmp_path), "--project", "x")
    assert usage.code == 2


def test_settings_file_permissions(
    run_cli: Run, project: Any, admin: Account, live_server: Any, tmp_path: Path
) -> None:
    config = tmp_path / "cfg" / "cyto" / "config.toml"
    no_env = {"CYTO_URL": None, "CYTO_TOKEN": None, "CYTO_CONFIG": str(config)}

    nothing = run_cli("projects", "list", env=no_env)
    assert nothing.code == 3 and "cyto login" in nothing.stderr

    login = run_cli("login", "--url", live_server.url, "--token-stdin", env=no_env, stdin=admin.token + "\n")
    assert login.code == 0, login.stderr
    assert "as dr.head" in login.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert admin.token in config.read_text()

    listed = run_cli("projects", "list", env=no_env)
    assert listed.code == 0, listed.stderr
    assert "Thyroid FNA" in listed.stdout

    os.chmod(config, 0o644)  # readable by the group and others: refused, with the fix
    refused = run_cli("projects", "list", env=no_env)
    assert refused.code == 3
    assert "may be read by others" in refused.stderr and f"chmod 600 {config}" in refused.stderr
    os.chmod(config, 0o640)
    assert run_cli("projects", "list", env=no_env).code == 3
    os.chmod(config, 0o600)
    assert run_cli("projects", "list", env=no_env).code == 0

    # the environment wins, and then the file is not read at all
    os.chmod(config, 0o666)
    from_env = run_cli("projects", "list", env={"CYTO_CONFIG": str(config)})
    assert from_env.code == 0, from_env.stderr


def test_login_with_a_password_creates_a_token(run_cli: Run, project: Any, live_server: Any, tmp_path: Path) -> None:
    from annotations.models import ApiToken
    from tests.factories import PASSWORD

    config = tmp_path / "login.toml"
    env = {"CYTO_URL": None, "CYTO_TOKEN": None, "CYTO_CONFIG": str(config)}
    login = run_cli("login", "--url", live_server.url, "--username", "dr.head", env=env, stdin=PASSWORD + "\n")
    assert login.code == 0, login.stderr
    token = ApiToken.objects.get(user__username="dr.head", name="cyto command line")
    assert token.prefix in config.read_text() and stat.S_IMODE(config.stat().st_mode) == 0o600
    assert run_cli("whoami", env=env).stdout.startswith("dr.head at ")

    wrong = run_cli("login", "--url", live_server.url, "--username", "dr.head", env=env, stdin="nope\n")
    assert wrong.code == 1 and "error:" in wrong.stderr


def test_models_and_queue(run_cli: Run, project: Any) -> None:
    from tests.factories import model_version_files
    from training.models import ModelKind

    version = model_version_files(project, ModelKind.CELLPOSE, {"cellpose.pth": b"x"}, name="site B")
    listed = run_cli("models", "list", "--project", str(project.pk))
    assert listed.code == 0, listed.stderr
    assert "site B" in listed.stdout and "cellpose" in listed.stdout

    promoted = run_cli("models", "promote", str(version.pk), "--reason", "better on site B")
    assert promoted.code == 0, promoted.stderr
    assert f"Version {version.pk} (cellpose 1) is active" in promoted.stdout
    version.refresh_from_db()
    assert version.status == "active"
    registry = json.loads(run_cli("models", "list", "--project", str(project.pk), "--json").stdout)
    assert registry["presegmenter"] == version.pk

    rolled = run_cli("models", "rollback", "--project", str(project.pk), "--kind", "cellpose")
    assert rolled.code == 0, rolled.stderr
    assert f"version {version.pk} retired" in rolled.stdout
    again = run_cli("models", "rollback", "--project", str(project.pk), "--kind", "cellpose")
    assert again.code == 1 and "error: 409 " in again.stderr

    queue = run_cli("queue", "--project", str(project.pk))
    assert queue.code == 0 and "annotate: 0" in queue.stdout


def test_an_incompatible_server_is_refused(run_cli: Run, project: Any, monkeypatch: Any) -> None:
    from drf_spectacular.settings import spectacular_settings

    monkeypatch.setattr(spectacular_settings, "VERSION", "2.0.0")
    result = run_cli("projects", "list")
    assert result.code == 6
    assert "the server speaks API 2.0.0" in result.stderr


def test_version_and_help(run_cli: Run, live_server: Any) -> None:
    import cytoclient

    version = run_cli("--version")
    assert version.code == 0 and cytoclient.API_VERSION in version.stdout
    helped = run_cli("--help")
    for command in ("login", "upload", "export", "import", "train", "models", "projects"):
        assert command in helped.stdout


def test_slide_regions_cells_and_tiles(run_cli: Run, slide_image: Any, tmp_path: Path) -> None:
    image = str(slide_image.id)
    created = run_cli(
        "regions", "create", "--image", image, "--polygon", "[[40, 40], [500, 40], [500, 500]]", "--name", "Top",
        "--json",
    )  # fmt: skip
    assert created.code == 0, created.stderr
    region = json.loads(created.stdout)
    assert region["name"] == "Top" and region["bbox"] == [40, 40, 500, 500]
    (tmp_path / "outline.json").write_text("[[600, 100], [900, 100], [750, 400]]")
    second = run_cli("regions", "create", "--image", image, "--polygon", f"@{tmp_path / 'outline.json'}")
    assert second.code == 0 and "Region 2" in second.stdout, second.stderr
    listed = run_cli("regions", "list", "--image", image)
    assert listed.code == 0 and "Top" in listed.stdout and "Region 2" in listed.stdout
    renamed = run_cli("regions", "update", str(region["id"]), "--image", image, "--name", "Upper")
    assert renamed.code == 0 and "'Upper'" in renamed.stdout, renamed.stderr
    refused = run_cli("regions", "create", "--image", image, "--polygon", "[[0, 0], [1, 1]]")
    assert refused.code == 1 and "(HTTP 400)" in refused.stderr and "\n  polygon: " in refused.stderr
    deleted = run_cli("regions", "delete", str(region["id"]), "--image", image)
    assert deleted.code == 0, deleted.stderr
    assert [r["name"] for r in json.loads(run_cli("regions", "list", "--image", image, "--json").stdout)] == [
        "Region 2"
    ]

    class_id = Image.objects.get(pk=slide_image.id).project.classes.get(name="thyroid cell").pk
    delta = tmp_path / "delta.json"
    delta.write_text(
        json.dumps({"added": [{"class_id": class_id, "polygon": square(x, 50, 20)} for x in (50, 250, 900)]})
    )
    saved = run_cli("cells", "patch", f"@{delta}", "--image", image, "--revision", "0")
    assert saved.code == 0, saved.stderr
    assert saved.stdout.startswith(f"Saved image {image} at revision 1: 3 added")

    pulled = run_cli("cells", "pull", "--image", image, "--bbox", "0,0,300,300", "--page-size", "1", "--json")
    assert pulled.code == 0, pulled.stderr
    body = json.loads(pulled.stdout)
    assert body["revision"] == 1 and [c["bbox"][0] for c in body["cells"]] == [50, 250]
    out = tmp_path / "viewport" / "cells.json"
    written = run_cli("cells", "pull", "--image", image, "--bbox", "0,0,300,300", "-o", str(out))
    assert written.code == 0 and f"Wrote 2 annotation cells in 0,0,300,300 of image {image}" in written.stdout
    assert json.loads(out.read_text()) == {"revision": 1, "cells": body["cells"]}
    bad_box = run_cli("cells", "pull", "--image", image, "--bbox", "0,0,300")
    assert bad_box.code == 2 and "--bbox" in bad_box.stderr

    # a stale delta that meets a later save: exit 1, the server's message and each conflict
    first = body["cells"][0]
    change = tmp_path / "change.json"
    change.write_text(json.dumps({"changed": [{"id": first["id"], "polygon": square(52, 52, 20)}]}))
    assert run_cli("cells", "patch", f"@{change}", "--image", image, "--revision", "1").code == 0
    stale = run_cli("cells", "patch", f"@{change}", "--image", image, "--revision", "1")
    assert stale.code == 1 and "error: 409 " in stale.stderr
    assert f"\n  changed.0: cell {first['id']} changed at revision 2" in stale.stderr

    tiles = run_cli("tiles", "download", "--image", image, "--level", "9", "-o", str(tmp_path / "tiles"))
    assert tiles.code == 0, tiles.stderr
    assert "Wrote 4 tiles (2 x 2) of level 9 (512 x 384 px)" in tiles.stdout
    assert sorted(p.name for p in (tmp_path / "tiles" / "9").iterdir()) == [
        "0_0.jpeg",
        "0_1.jpeg",
        "1_0.jpeg",
        "1_1.jpeg",
    ]
    too_deep = run_cli("tiles", "download", "--image", image, "--level", "11", "-o", str(tmp_path / "t"))
    assert too_deep.code == 2 and "from 0 to 10" in too_deep.stderr
