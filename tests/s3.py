"""An S3-protocol server of the tests' own: moto's standalone server (``moto_server``, from
PyPI), started as a separate process on a free port and stopped afterwards.

moto because it installs with pip (no Docker, no binary download), speaks the S3 REST protocol
over HTTP with signed requests as boto3 sends them, and starts in about a second; the tests
exercise the same django-storages/boto3 code as production against a real socket.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def storage_env(self, prefix: str) -> dict[str, str]:
        """The environment a process (web or worker) is configured with for this bucket."""
        return {
            "STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "STORAGE_ENDPOINT_URL": self.endpoint,
            "STORAGE_ACCESS_KEY_ID": ACCESS_KEY,
            "STORAGE_SECRET_ACCESS_KEY": SECRET_KEY,
            "STORAGE_REGION": REGION,
        }

    def storages_setting(self, prefix: str) -> dict[str, Any]:
        """``settings.STORAGES`` as config/settings.py builds it from :meth:`storage_env`."""
        return {
            "default": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {
                    "bucket_name": self.bucket,
                    "location": prefix,
                    "endpoint_url": self.endpoint,
                    "region_name": REGION,
                    "access_key": ACCESS_KEY,
                    "secret_key": SECRET_KEY,
                    "default_acl": None,
                    "querystring_auth": True,
                    "querystring_expire": 300,
                    "file_overwrite": False,
                    "signature_version": "s3v4",
                    "addressing_style": "path",
                    "max_memory_size": 16 * 1024 * 1024,
                },
            },
            "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
        }

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@contextmanager
def s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start ``moto_server`` on a free port with one private bucket; kill it on exit."""
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if executable is None:
        raise RuntimeError("moto_server is not installed (requirements.txt: moto[s3,server])")
    port = free_port()
    log = (workdir / "moto.log").open("wb")
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir
    )
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", bucket=f"cyto-{uuid.uuid4().hex[:12]}", process=process)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {(workdir / 'moto.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        server.kill()
        log.close()
