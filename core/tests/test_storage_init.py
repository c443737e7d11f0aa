"""``manage.py storage_init`` against a real S3-protocol server (moto's, tests/s3.py): it creates a
missing bucket private, a second run changes nothing, it waits for a server that is still
starting and gives up after its timeout, and with local storage it has nothing to do."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from core.management.commands import storage_init
from tests.s3 import S3Server, free_port, s3_server

BLOCK_ALL = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def _run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("storage_init", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _use_bucket(settings: Any, storages_setting: dict[str, Any], bucket: str) -> None:
    """Point the default storage at ``bucket`` (as STORAGE_URL=s3://<bucket>/<prefix> would)."""
    storages_setting["default"]["OPTIONS"]["bucket_name"] = bucket
    settings.STORAGE_URL = f"s3://{bucket}/{storages_setting['default']['OPTIONS']['location']}"
    settings.STORAGES = storages_setting


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with s3_server(tmp_path) as server:
        yield server


@pytest.fixture
def new_bucket(s3: S3Server, settings: Any) -> str:
    """A bucket name that does not exist yet, configured as the default storage's."""
    bucket = f"init-{uuid.uuid4().hex[:12]}"
    _use_bucket(settings, s3.storages_setting("platform"), bucket)
    return bucket


def _bucket_names(server: S3Server) -> set[str]:
    return {bucket["Name"] for bucket in server.client().list_buckets()["Buckets"]}


def test_local_storage_has_nothing_to_do(settings: Any) -> None:
    settings.STORAGE_URL = "file:"
    settings.STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    }
    out, _ = _run()
    assert "nothing to do" in out


def test_creates_a_missing_bucket_private_and_a_second_run_is_a_no_op(s3: S3Server, new_bucket: str) -> None:
    assert new_bucket not in _bucket_names(s3)
    out, _ = _run("--timeout", "10")
    assert f"created bucket {new_bucket!r}" in out
    assert "public access blocked" in out

    client = s3.client()
    client.head_bucket(Bucket=new_bucket)
    assert client.get_public_access_block(Bucket=new_bucket)["PublicAccessBlockConfiguration"] == BLOCK_ALL
    grants = client.get_bucket_acl(Bucket=new_bucket)["Grants"]
    assert [grant["Grantee"]["Type"] for grant in grants] == ["CanonicalUser"], grants  # the owner only

    # The default storage writes into the bucket it made.
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    name = default_storage.save("probe.txt", ContentFile(b"x"))
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=new_bucket).get("Contents", []))
    assert keys == [f"platform/{name}"]

    buckets = _bucket_names(s3)
    out, _ = _run("--timeout", "10")
    assert f"bucket {new_bucket!r} exists" in out and "created" not in out
    assert _bucket_names(s3) == buckets
    assert sorted(item["Key"] for item in client.list_objects_v2(Bucket=new_bucket).get("Contents", [])) == keys


def test_an_existing_bucket_is_left_as_it_is(s3: S3Server, settings: Any) -> None:
    _use_bucket(settings, s3.storages_setting("platform"), s3.bucket)
    s3.client().put_object(Bucket=s3.bucket, Key="platform/kept.txt", Body=b"kept")
    buckets = _bucket_names(s3)
    out, _ = _run()
    assert f"bucket {s3.bucket!r} exists" in out
    assert _bucket_names(s3) == buckets
    assert s3.keys("platform/") == ["platform/kept.txt"]


def test_a_bucket_created_meanwhile_by_another_process_is_fine(s3: S3Server) -> None:
    # Outside us-east-1 a second CreateBucket answers BucketAlreadyOwnedByYou.
    client = s3.client()
    bucket = f"race-{uuid.uuid4().hex[:12]}"
    assert storage_init.bucket_create(client, bucket, "eu-west-1") is True
    assert storage_init.bucket_create(client, bucket, "eu-west-1") is False


@pytest.mark.parametrize("grant", ["acl", "policy"])
def test_a_public_bucket_stops_the_start_where_the_server_has_no_public_access_block(
    s3: S3Server, new_bucket: str, monkeypatch: pytest.MonkeyPatch, grant: str
) -> None:
    # As on SeaweedFS, which answers NotImplemented to PutPublicAccessBlock.
    monkeypatch.setattr(storage_init, "public_access_block", lambda client, bucket: False)
    out, _ = _run()
    assert "no ACL or policy makes the bucket public" in out

    client = s3.client()
    if grant == "acl":
        client.put_bucket_acl(Bucket=new_bucket, ACL="public-read")
    else:
        statement = {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{new_bucket}/*",
        }
        client.put_bucket_policy(
            Bucket=new_bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        )
    with pytest.raises(CommandError, match="is public"):
        _run()


def test_gives_up_after_the_timeout_when_nothing_answers(s3: S3Server, settings: Any) -> None:
    storages_setting = s3.storages_setting("platform")
    storages_setting["default"]["OPTIONS"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens
    _use_bucket(settings, storages_setting, "never")
    started = time.monotonic()
    with pytest.raises(CommandError, match="did not get ready within 1 s"):
        _run("--timeout", "1")
    assert time.monotonic() - started < 10


def test_waits_for_a_server_that_is_still_starting(settings: Any, tmp_path: Path, s3: S3Server) -> None:
    # The same settings as the running server's, on a port where a second server starts later.
    port = free_port()
    storages_setting = s3.storages_setting("platform")
    storages_setting["default"]["OPTIONS"]["endpoint_url"] = f"http://127.0.0.1:{port}"
    _use_bucket(settings, storages_setting, f"late-{uuid.uuid4().hex[:12]}")
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    processes: list[subprocess.Popen[bytes]] = []

    def start_later() -> None:
        time.sleep(1.5)
        processes.append(
            subprocess.Popen(
                [executable, "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        )

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        out, err = _run("--timeout", "60")
    finally:
        starter.join()
        for process in processes:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    assert "retrying" in err
    assert "created bucket" in out


def test_imports_a_former_media_folder_once(s3: S3Server, new_bucket: str, tmp_path: Path) -> None:
    media = tmp_path / "old-media"
    (media / "images" / "1").mkdir(parents=True)
    (media / "images" / "1" / "original.png").write_bytes(b"png")
    (media / "exports" / "e.zip").parent.mkdir()
    (media / "exports" / "e.zip").write_bytes(b"zip")
    (media / "models" / "7").mkdir(parents=True)
    (media / "models" / "7" / "model.pt").write_bytes(b"weights")  # uploaded by migration 0004 instead
    (media / "link.png").symlink_to(media / "images" / "1" / "original.png")

    out, _ = _run("--import-from", str(media), "--exclude", "models")
    assert f"created bucket {new_bucket!r}" in out
    assert "imported 2 file(s)" in out and "0 already there" in out
    assert s3.client().get_object(Bucket=new_bucket, Key="platform/images/1/original.png")["Body"].read() == b"png"
    keys = sorted(item["Key"] for item in s3.client().list_objects_v2(Bucket=new_bucket)["Contents"])
    assert keys == ["platform/exports/e.zip", "platform/images/1/original.png"]

    # Run again (say, after an interrupted copy): nothing is copied twice or renamed.
    (media / "images" / "1" / "display.png").write_bytes(b"display")
    out, _ = _run("--import-from", str(media), "--exclude", "models/")
    assert "imported 1 file(s)" in out and "2 already there" in out
    keys = sorted(item["Key"] for item in s3.client().list_objects_v2(Bucket=new_bucket)["Contents"])
    assert keys == ["platform/exports/e.zip", "platform/images/1/display.png", "platform/images/1/original.png"]


def test_import_from_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not a folder"):
        _run("--import-from", str(tmp_path / "nowhere"))
