"""Make the default storage's S3 bucket ready before the platform uses it: create it when it is
missing and make sure it is not public. Run by docker/entrypoint.sh on the web service
(``STORAGE_INIT=true``) before the migrations, which may already write to the bucket.

Idempotent: an existing bucket is left as it is (a second run, or two web replicas starting at
once, changes nothing). While the object store is still starting (connection refused, a 5xx
answer) the command retries until ``--timeout`` seconds have passed; a refusal that waiting
cannot fix (wrong credentials, a bucket name owned by someone else) fails at once.

The bucket holds patient images, so it is private: it is created without an ACL (private is
S3's default), a public access block is put on it where the server supports one (SeaweedFS and
some others answer NotImplemented), and no public ACL or policy is ever set. Where the server
has no public access block, a bucket that an ACL or policy makes public stops the start-up
rather than serve patient data to anyone.

``--import-from DIR`` then copies the files under a local folder into the default storage
under the same names (those it already holds are skipped): the way to move the files of a
deployment that kept them on a shared disk (the former ``media`` volume, MEDIA_ROOT) into the
bucket. README.md ("Upgrading from the shared media volume") gives the steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.core.management.base import BaseCommand, CommandError, CommandParser
from storages.backends.s3 import S3Storage

# Errors a starting server gives that waiting may cure (the HTTP status of a ClientError).
_RETRY_STATUS = {500, 502, 503, 504}
_NOT_SUPPORTED = {"NotImplemented", "NotImplementedError", "NotSupported", "MethodNotAllowed"}
_PUBLIC_GRANTEES = {
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
}
_BLOCK_ALL = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _unsupported(exc: ClientError) -> bool:
    return _code(exc) in _NOT_SUPPORTED or _status(exc) == 501


def s3_client(storage: S3Storage) -> Any:
    """A boto3 client configured as ``storage`` is (endpoint, credentials, region, addressing
    style, signature), but with short timeouts and no retries of its own: the command does the
    waiting, so that one call to a blackholed host cannot outlast ``--timeout``."""
    config = storage.client_config.merge(
        Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 1, "mode": "standard"})
    )
    session = boto3.Session(
        aws_access_key_id=storage.access_key,
        aws_secret_access_key=storage.secret_key,
        aws_session_token=storage.security_token,
    )
    return session.client(
        "s3",
        region_name=storage.region_name,
        use_ssl=storage.use_ssl,
        endpoint_url=storage.endpoint_url,
        config=config,
        verify=storage.verify,
    )


def bucket_exists(client: Any, bucket: str) -> bool:
    """Whether ``bucket`` exists and these credentials may use it (CommandError when it exists
    but is not ours to use)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _status(exc) == 404 or _code(exc) in {"404", "NoSuchBucket", "NotFound"}:
            return False
        if _status(exc) == 403:
            raise CommandError(
                f"Bucket {bucket!r}: access denied. Check STORAGE_ACCESS_KEY_ID/STORAGE_SECRET_ACCESS_KEY "
                "(the object store's credentials) and that the bucket name is not someone else's."
            ) from exc
        raise
    return True


def bucket_create(client: Any, bucket: str, region: str | None) -> bool:
    """Create ``bucket`` (private: no ACL is sent). True when this call created it, False when
    it already was ours (another process created it meanwhile)."""
    arguments: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        # us-east-1 is the one region that must not be named as a location constraint.
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**arguments)
    except ClientError as exc:
        if _code(exc) == "BucketAlreadyOwnedByYou":
            return False
        if _code(exc) == "BucketAlreadyExists":
            raise CommandError(
                f"Bucket {bucket!r} exists and belongs to another account: choose another name."
            ) from exc
        raise
    return True


def public_access_block(client: Any, bucket: str) -> bool:
    """Put a public access block that blocks everything on ``bucket``; False when the server
    does not implement public access blocks."""
    try:
        client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=dict(_BLOCK_ALL))
    except ClientError as exc:
        if _unsupported(exc):
            return False
        raise
    return True


def public_reasons(client: Any, bucket: str) -> list[str]:
    """What makes ``bucket`` readable or writable by anyone: ACL grants to all (authenticated)
    users and policy statements that allow every principal. Checks the server does not
    implement are skipped."""
    reasons: list[str] = []
    try:
        acl = client.get_bucket_acl(Bucket=bucket)
    except ClientError as exc:
        if not _unsupported(exc):
            raise
    else:
        for grant in acl.get("Grants", []):
            uri = grant.get("Grantee", {}).get("URI", "")
            if uri in _PUBLIC_GRANTEES:
                reasons.append(f"its ACL grants {grant.get('Permission')} to {uri.rsplit('/', 1)[-1]}")
    try:
        policy = client.get_bucket_policy(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) != "NoSuchBucketPolicy" and not _unsupported(exc) and _status(exc) != 404:
            raise
    else:
        statements = json.loads(policy.get("Policy") or "{}").get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            principal = statement.get("Principal")
            everyone = principal == "*" or (isinstance(principal, dict) and "*" in principal.values())
            if statement.get("Effect") == "Allow" and everyone:
                reasons.append(f"its policy allows {statement.get('Action')} to every principal")
    return reasons


def folder_import(storage: Storage, folder: Path, *, exclude: list[str]) -> tuple[int, int]:
    """Copy every regular file under ``folder`` into ``storage`` as its path relative to
    ``folder`` (the name FileSystemStorage gave it), except those under an ``exclude`` prefix
    and those the storage already has. Symbolic links are not followed. Returns (copied,
    already there)."""
    prefixes = [prefix.strip("/") for prefix in exclude if prefix.strip("/")]
    copied = present = 0
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        if any(name == prefix or name.startswith(prefix + "/") for prefix in prefixes):
            continue
        if storage.exists(name):
            present += 1
            continue
        with path.open("rb") as handle:
            saved = storage.save(name, File(handle, name=name))
        if saved != name:
            # Another process wrote the name meanwhile: ours went elsewhere; take it back.
            storage.delete(saved)
            present += 1
            continue
        copied += 1
    return copied, present


class Command(BaseCommand):
    help = (
        "Create the default storage's S3 bucket if it is missing and make sure it is not public "
        "(nothing to do with local file storage)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="seconds to keep retrying while the object store starts (default 60)",
        )
        parser.add_argument(
            "--import-from",
            type=Path,
            default=None,
            metavar="DIR",
            help="then copy the files under DIR (a former MEDIA_ROOT) into the default storage, same names",
        )
        parser.add_argument(
            "--exclude",
            action="append",
            default=[],
            metavar="PREFIX",
            help="with --import-from: leave out the files under DIR/PREFIX (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        storage = storages["default"]
        folder: Path | None = options["import_from"]
        if folder is not None and not folder.is_dir():
            raise CommandError(f"--import-from {folder}: not a folder")
        if not str(settings.STORAGE_URL).startswith("s3://") or not isinstance(storage, S3Storage):
            self.stdout.write("storage_init: the default storage is the local disk (STORAGE_URL=file:); nothing to do")
        else:
            self._bucket_ready(storage, float(options["timeout"]))
        if folder is not None:
            copied, present = folder_import(storage, folder, exclude=options["exclude"])
            self.stdout.write(f"storage_init: imported {copied} file(s) from {folder}, {present} already there")

    def _bucket_ready(self, storage: S3Storage, timeout: float) -> None:
        bucket = storage.bucket_name
        client = s3_client(storage)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._prepare(client, bucket, storage.region_name)
                return
            except ClientError as exc:
                # A 5xx while the store starts (SeaweedFS's S3 gateway answers before its filer
                # is up) is worth waiting for; any other refusal is not.
                if _status(exc) not in _RETRY_STATUS:
                    raise CommandError(f"storage_init: bucket {bucket!r}: {exc}") from exc
                error: Exception = exc
            except BotoCoreError as exc:
                # no connection yet: refused, the host name not resolvable yet, timed out
                error = exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandError(
                    f"storage_init: the object store at {storage.endpoint_url or 'AWS S3'} did not get ready "
                    f"within {timeout:g} s: {type(error).__name__}: {error}"
                ) from error
            self.stderr.write(f"storage_init: object store not ready ({type(error).__name__}); retrying")
            time.sleep(min(2.0, left))

    def _prepare(self, client: Any, bucket: str, region: str | None) -> None:
        if bucket_exists(client, bucket):
            self.stdout.write(f"storage_init: bucket {bucket!r} exists")
        elif bucket_create(client, bucket, region):
            self.stdout.write(f"storage_init: created bucket {bucket!r}")
        else:
            self.stdout.write(f"storage_init: bucket {bucket!r} was just created by another process")

        if public_access_block(client, bucket):
            self.stdout.write("storage_init: public access blocked")
            return
        # No public access block on this server: the bucket is private only if nothing grants
        # public access, and this command never does; someone else's grant stops the start-up.
        reasons = public_reasons(client, bucket)
        if reasons:
            raise CommandError(
                f"Bucket {bucket!r} is public: {'; '.join(reasons)}. It holds patient images: remove "
                "the grant or policy (the platform needs none; it hands out signed URLs only)."
            )
        self.stdout.write(
            "storage_init: the server has no public access block; no ACL or policy makes the bucket public"
        )
