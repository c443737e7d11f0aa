"""``cyto``: the command line on top of the client.

The server and token come from ``--url``, ``CYTO_URL`` and ``CYTO_TOKEN``, or the file ``cyto
login`` writes (:mod:`cytoclient.config`). Results go to stdout (``--json`` for scripts),
progress bars and errors to stderr. Exit codes: see ``EXIT_*`` below and docs/client.md.

One module past the usual size: each command is a short function over the client, and the
parser that ties them together reads best in one place.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cytoclient import endpoints as ep
from cytoclient._transport import Transport
from cytoclient._version import API_VERSION, __version__
from cytoclient.client import Client, Exports
from cytoclient.config import ENV_TOKEN, ENV_URL, config_path, config_write, settings_resolve
from cytoclient.errors import (
    ApiError,
    ConfigurationError,
    ConflictError,
    CytoError,
    IncompatibleServerError,
    JobFailedError,
    TransportError,
    ValidationError,
    WaitTimeoutError,
)
from cytoclient.models import Model
from cytoclient.progress import ProgressBar, ProgressCallback

EXIT_OK = 0
EXIT_ERROR = 1  # the server refused (its message is printed), or answered something unexpected
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_CONFIG = 3  # no URL or token, or a configuration file others may read
EXIT_CONNECTION = 4  # the server could not be reached
EXIT_JOB_FAILED = 5  # a training or export job that was waited for failed or was cancelled
EXIT_INCOMPATIBLE = 6  # the server speaks another major API version

JOB_KINDS = ("two_stage", "nnunet", "cellpose", "refinement")
MULTIPART = ("merge", "split", "refuse")
MODEL_KINDS = ("watershed", "region_growing", "nnunet", "cellpose", "two_stage", "refinement")


class Output:
    """Where results and progress go: stdout for results (JSON with ``--json``), stderr for the rest."""

    def __init__(self, *, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self._bars: list[ProgressBar] = []

    def progress(self) -> ProgressCallback | None:
        if self.quiet:
            return None
        bar = ProgressBar(sys.stderr)
        self._bars.append(bar)
        return bar

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars.clear()

    def note(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)

    def result(self, data: Any, text: str | Callable[[], str]) -> None:
        self.close()
        if self.as_json:
            print(json.dumps(_plain(data), indent=2, default=str))
        else:
            print(text() if callable(text) else text)


def _plain(data: Any) -> Any:
    if isinstance(data, Model):
        return data.raw
    if isinstance(data, list | tuple):
        return [_plain(d) for d in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, Path):
        return str(data)
    return data


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines) if rows else lines[0] + "\n(none)"


# --- commands ------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace, out: Output) -> int:
    url = args.url or _ask("Server URL (https://...): ")
    if args.username:
        password = getpass.getpass(f"Password for {args.username}: ")
        token = _token_from_password(url, args.username, password, name=args.token_name, out=out)
    elif args.token_stdin:
        token = sys.stdin.readline().strip()
    else:
        token = getpass.getpass("API token (cyt_...): ").strip()
    if not token:
        raise ConfigurationError("no token given")
    with Client(url, token) as client:
        me = client.me()
        server_version = client.server_api_version()
    path = config_write(url, token, Path(args.config_file) if args.config_file else None)
    out.result(
        {"username": me.username, "url": url, "config": str(path), "api_version": server_version},
        f"Signed in to {url} (API {server_version}) as {me.username}; settings written to {path} (mode 0600).",
    )
    return EXIT_OK


def _ask(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()


def _token_from_password(url: str, username: str, password: str, *, name: str, out: Output) -> str:
    """A new API token for ``username``: sign in with the password (a session), then create one
    (the session's CSRF token in the header, as the browser sends it)."""
    transport = Transport(url, None)
    try:
        transport.json(ep.LOGIN, json={"username": username, "password": password})
        csrf = transport.http.cookies.get("csrftoken") or ""
        origin = transport.root.split("/api/v1/")[0]
        created = transport.json(
            ep.TOKEN_CREATE,
            json={"name": name},
            headers={"X-CSRFToken": csrf, "Referer": transport.root, "Origin": origin},
        )
    finally:
        transport.close()
    out.note(f"Created the API token {created.get('prefix', '')}... named {name!r} (revoke it in your account).")
    return str(created["token"])


def cmd_whoami(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        me = client.me()
        version = client.server_api_version()
    roles = ", ".join(f"project {m['project']}: {m['role']}" for m in me.memberships) or "no project memberships"
    out.result(
        {**me.raw, "url": client.url, "api_version": version, "client_api_version": API_VERSION},
        f"{me.username} at {client.url} (API {version}; client {__version__}); {roles}",
    )
    return EXIT_OK


def cmd_projects_list(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        projects = client.projects.list()
    rows = [(p.id, p.name, p.my_role or "", p.image_count, ", ".join(c.name for c in p.classes)) for p in projects]
    out.result(projects, lambda: _table(rows, ("id", "name", "role", "images", "classes")))
    return EXIT_OK


def cmd_upload(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        result = client.images.upload(
            args.project,
            args.paths,
            bethesda=args.bethesda,
            stain=args.stain,
            magnification=args.magnification,
            slide_code=args.slide,
            split=args.split,
            recursive=args.recursive,
            skip_existing=not args.no_skip_existing,
            batch_size=args.batch_size,
            progress=out.progress(),
        )
    out.result(
        {"uploaded": result.images, "skipped": [str(p) for p in result.skipped]},
        lambda: (
            f"Uploaded {len(result.images)} images to project {args.project}"
            + (f"; skipped {len(result.skipped)} already there" if result.skipped else "")
            + "".join(f"\n  {i.id}  {i.file_name}  {i.split}  {i.bethesda}" for i in result.images)
        ),
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    options: dict[str, Any] = {}
    if args.segmentation:
        options["segmentation"] = args.segmentation
    if args.gzip:
        options["gzip"] = True
    if args.include_empty:
        options["include_empty"] = True
    if args.object_type:
        options["object_type"] = args.object_type
    if args.dataset_id is not None:
        options["dataset_id"] = args.dataset_id
    with _client(args) as client:
        result = client.exports.download(
            args.project,
            args.output,
            kind=args.kind,
            layer=args.layer,
            model_version=args.model_version,
            split=args.split,
            bethesda=args.bethesda,
            class_ids=_ids(args.class_ids),
            image_ids=_ids(args.image_ids),
            run_async=args.run_async,
            wait=not args.no_wait,
            progress=out.progress(),
            **options,
        )
    if isinstance(result, Path):
        out.result(
            {"file": str(result), "bytes": result.stat().st_size}, f"Wrote {result} ({result.stat().st_size} bytes)"
        )
    else:
        out.result(result, f"Export job {result.id} is {result.status}: follow it with the API ({result.url})")
    return EXIT_OK


def _ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ids separated by commas: {text!r}") from exc


def cmd_import_coco(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        report = client.imports.coco(
            args.project,
            args.file,
            images_zip=args.images,
            dry_run=args.dry_run,
            unknown_categories="create" if args.create_categories else "reject",
            multipart=args.multipart,
        )
    verb = "Would import" if report.dry_run else "Imported"
    out.result(
        report,
        lambda: (
            f"{verb} {report.cells} cells on {report.images.get('matched', 0)} matched and "
            f"{report.images.get('uploaded', 0)} uploaded images"
            + (f"; new classes: {', '.join(report.categories_created)}" if report.categories_created else "")
            + "".join(f"\n  warning: {w}" for w in report.warnings)
        ),
    )
    return EXIT_OK


def cmd_import_geojson(args: argparse.Namespace, out: Output) -> int:
    class_map: dict[str, Any] | None = None
    if args.class_map:
        text = Path(args.class_map[1:]).read_text() if args.class_map.startswith("@") else args.class_map
        try:
            class_map = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--class-map is not JSON: {exc}") from exc
        if not isinstance(class_map, dict):
            raise argparse.ArgumentTypeError('--class-map must be a JSON object: {"QuPath name": class id or name}')
    default_class: int | str | None = args.default_class
    if isinstance(default_class, str) and default_class.isdigit():
        default_class = int(default_class)
    with _client(args) as client:
        report = client.imports.geojson(
            args.image,
            args.file,
            revision=args.revision,
            mode=args.mode,
            class_map=class_map,
            default_class=default_class,
            multipart=args.multipart,
            holes=args.holes,
            dry_run=args.dry_run,
        )
    verb = "Would import" if report.dry_run else "Imported"
    classes = ", ".join(f"{name}: {count}" for name, count in report.classes.items())
    out.result(
        report,
        lambda: (
            f"{verb} {report.cells} cells from {report.features} features into image {report.image} "
            f"(revision {report.revision}{', ' + str(report.deleted) + ' removed' if report.deleted else ''})"
            + (f"; {classes}" if classes else "")
            + "".join(f"\n  skipped feature {s.get('feature')}: {s.get('reason')}" for s in report.skipped)
            + "".join(f"\n  warning: {w}" for w in report.warnings)
        ),
    )
    return EXIT_OK


def _set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise argparse.ArgumentTypeError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _job_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        text = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--config is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise argparse.ArgumentTypeError("--config must be a JSON object")
        config.update(loaded)
    for item in args.set or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--set takes key.path=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw  # a bare word: a string
        _set_path(config, key.strip(), value)
    return config


def _follow(client: Client, job_id: int, args: argparse.Namespace, out: Output) -> int:
    on_log = (lambda text: print(text, end="" if text.endswith("\n") else "\n", file=sys.stderr)) if args.log else None
    job = client.training.wait(job_id, progress=None if args.log else out.progress(), on_log=on_log)
    metrics = client.training.metrics(job)
    lines = [f"Training job {job.id} {job.status}; versions: {', '.join(map(str, job.model_versions)) or 'none'}"]
    for version_id, values in metrics.items():
        names = _metric_columns([k for k, v in values.items() if isinstance(v, int | float)])
        shown = ", ".join(f"{k}={values[k]:.3f}" for k in names)
        lines.append(f"  version {version_id}: {shown or 'not evaluated'}")
    promotion = job.result.get("promotion") or {}
    for version_id, decision in promotion.items():
        if isinstance(decision, dict) and "promoted" in decision:
            verdict = "promoted" if decision["promoted"] else "not promoted"
            lines.append(f"  version {version_id}: {verdict} ({decision.get('reason', '')})")
    out.result({"job": job, "metrics": {str(k): v for k, v in metrics.items()}}, "\n".join(lines))
    return EXIT_OK


def cmd_train(args: argparse.Namespace, out: Output) -> int:
    config = _job_config(args)
    with _client(args) as client:
        job = client.training.start(
            args.project, args.kind, config, preset=args.preset, device=args.device, snapshot=args.snapshot
        )
        if not args.wait:
            out.result(job, f"Training job {job.id} {job.status} ({job.kind}); follow it: cyto job {job.id} --wait")
            return EXIT_OK
        out.note(f"Training job {job.id} {job.status} ({job.kind})")
        return _follow(client, job.id, args, out)


def cmd_job(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        if args.cancel:
            answer = client.training.cancel(args.job)
            out.result(answer, f"Training job {args.job}: cancel requested ({answer.get('status')})")
            return EXIT_OK
        if args.wait:
            return _follow(client, args.job, args, out)
        job = client.training.get(args.job)
    fraction = job.fraction
    out.result(
        job,
        lambda: (
            f"Training job {job.id} ({job.kind}) {job.status}"
            + (f", {fraction * 100:.0f}%" if fraction is not None else "")
            + f": {job.describe()}"
            + (f"\n{job.log[-2000:]}" if args.log else "")
        ),
    )
    return EXIT_OK


def _metric_columns(names: Sequence[str]) -> list[str]:
    preferred = [n for n in ("f1_50", "dice", "iou", "ranked_ap50", "dsb") if n in names]
    return preferred or list(names[:4])


def cmd_models_list(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        registry = client.models.list(args.project, kind=args.kind)
    columns = _metric_columns(registry.metric_names)

    def metric(values: dict[str, float | None] | None, name: str) -> str:
        value = (values or {}).get(name)
        return f"{value:.3f}" if isinstance(value, int | float) else "-"

    rows = [
        (
            v.id,
            v.kind,
            v.number,
            v.name,
            v.status + (" *" if v.presegmenter else ""),
            *(metric(v.metrics, c) for c in columns),
        )
        for v in registry.versions
    ]
    out.result(
        registry,
        lambda: (
            _table(rows, ("id", "kind", "number", "name", "status", *columns))
            + ("\n* pre-segments the project's images now" if registry.presegmenter else "")
        ),
    )
    return EXIT_OK


def cmd_models_promote(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        version = client.models.promote(args.version, reason=args.reason or "")
    out.result(version, f"Version {version.id} ({version.kind} {version.number}) is {version.status}")
    return EXIT_OK


def cmd_models_rollback(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        result = client.models.rollback(args.project, args.kind)
    out.result(result, f"Rolled back {args.kind}: version {result.rolled_back} retired, {result.active} active")
    return EXIT_OK


def cmd_queue(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        queue = client.review.queue(args.project, limit=args.limit)
    lines = [f"Project {queue.project} (order: {queue.order})"]
    for name in ("annotate", "review", "adjudicate", "assign"):
        part = getattr(queue, name)
        lines.append(
            f"  {name}: {part.count}" + "".join(f"\n    {i.id}  {i.file_name}  {i.status}" for i in part.images)
        )
    out.result(queue, "\n".join(lines))
    return EXIT_OK


def _json_arg(text: str, option: str) -> Any:
    """A JSON value given inline, as ``@file.json``, or ``-`` (stdin)."""
    if text == "-":
        source = sys.stdin.read()
    elif text.startswith("@"):
        source = Path(text[1:]).read_text()
    else:
        source = text
    try:
        return json.loads(source)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{option} is not JSON: {exc}") from exc


def _polygon_arg(text: str) -> list[Any]:
    polygon = _json_arg(text, "--polygon")
    if not isinstance(polygon, list):
        raise argparse.ArgumentTypeError("--polygon must be a JSON list of points: [[x, y], ...]")
    return polygon


def _bbox_arg(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--bbox takes x0,y0,x1,y1 (numbers), got {text!r}") from exc
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--bbox takes four numbers x0,y0,x1,y1, got {text!r}")
    return values


def cmd_cells_pull(args: argparse.Namespace, out: Output) -> int:
    bbox = _bbox_arg(args.bbox) if args.bbox else None
    with _client(args) as client:
        layer = client.cells.get(
            args.image, layer=args.layer, model_version=args.model_version, bbox=bbox, page_size=args.page_size
        )
    where = f" in {args.bbox}" if args.bbox else ""
    if args.output is not None:
        target: Path = args.output
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_text(json.dumps({"revision": layer.revision, "cells": [c.raw for c in layer.cells]}))
        partial.replace(target)
        out.result(
            {"file": str(target), "revision": layer.revision, "cells": len(layer.cells)},
            f"Wrote {len(layer.cells)} {args.layer} cells{where} of image {args.image} "
            f"(revision {layer.revision}) to {target}",
        )
        return EXIT_OK
    rows = [(c.id, c.class_id, c.source, f"{c.area:.0f}", ",".join(f"{v:g}" for v in c.bbox)) for c in layer.cells]
    out.result(
        layer,
        lambda: (
            f"Image {args.image}, {args.layer} layer{where}: {len(layer.cells)} cells (revision {layer.revision})\n"
            + _table(rows, ("id", "class", "source", "area", "bbox x,y,w,h"))
        ),
    )
    return EXIT_OK


def cmd_cells_patch(args: argparse.Namespace, out: Output) -> int:
    delta = _json_arg(args.delta, "DELTA")
    if not isinstance(delta, dict) or set(delta) - {"added", "changed", "deleted"}:
        raise argparse.ArgumentTypeError(
            'DELTA must be a JSON object {"added": [...], "changed": [...], "deleted": [...]}'
        )
    with _client(args) as client:
        result = client.cells.patch(
            args.image,
            revision=args.revision,
            added=delta.get("added") or (),
            changed=delta.get("changed") or (),
            deleted=delta.get("deleted") or (),
        )
    out.result(
        result,
        lambda: (
            f"Saved image {args.image} at revision {result.revision}: {len(result.added)} added "
            f"({', '.join(str(c.id) for c in result.added) or 'none'}), {len(result.changed)} changed, "
            f"{len(result.deleted)} deleted"
        ),
    )
    return EXIT_OK


def cmd_regions_list(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        regions = client.regions.list(args.image)
    rows = [(r.id, r.name, r.status, ",".join(str(v) for v in r.bbox), len(r.polygon)) for r in regions]
    out.result(regions, lambda: _table(rows, ("id", "name", "status", "bbox x0,y0,x1,y1", "points")))
    return EXIT_OK


def cmd_regions_create(args: argparse.Namespace, out: Output) -> int:
    polygon = _polygon_arg(args.polygon)
    with _client(args) as client:
        region = client.regions.create(args.image, polygon=polygon, name=args.name)
    out.result(region, f"Region {region.id} ({region.name!r}) on image {region.image}, bbox {region.bbox}")
    return EXIT_OK


def cmd_regions_update(args: argparse.Namespace, out: Output) -> int:
    polygon = _polygon_arg(args.polygon) if args.polygon else None
    if polygon is None and args.name is None:
        raise argparse.ArgumentTypeError("give --name and/or --polygon")
    with _client(args) as client:
        region = client.regions.update(args.image, args.region, name=args.name, polygon=polygon)
    out.result(region, f"Region {region.id} ({region.name!r}) on image {region.image}, bbox {region.bbox}")
    return EXIT_OK


def cmd_regions_delete(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        client.regions.delete(args.image, args.region)
    out.result({"deleted": args.region}, f"Deleted region {args.region} of image {args.image} (its cells stay)")
    return EXIT_OK


def cmd_regions_presegment(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        answer = client.regions.presegment(args.image, args.region, model_version=args.model_version)
        image = client.images.get(args.image)
    out.result(
        {**answer, "presegment_tiles_total": image.presegment_tiles_total},
        f"Region {args.region} of image {args.image}: pre-segmentation {answer.get('presegment_status')} "
        f"with model version {answer.get('model_version')}, {image.presegment_tiles_total} tiles",
    )
    return EXIT_OK


def cmd_tiles_download(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as client:
        image = client.images.get(args.image)
        grid = image.tile_grid()
        level = grid.max_level if args.level is None else args.level
        if not 0 <= level <= grid.max_level:
            raise argparse.ArgumentTypeError(f"--level must be from 0 to {grid.max_level} for image {args.image}")
        files = client.tiles.download_level(image, args.output, level=level, progress=out.progress())
    cols, rows = grid.tile_counts(level)
    width, height = grid.level_size(level)
    out.result(
        {"folder": str(Path(args.output) / str(level)), "level": level, "tiles": len(files), "files": files},
        f"Wrote {len(files)} tiles ({cols} x {rows}) of level {level} ({width} x {height} px) "
        f"to {Path(args.output) / str(level)}",
    )
    return EXIT_OK


# --- the parser ----------------------------------------------------------------------------

_GLOBAL_DEFAULTS: dict[str, Any] = {"url": None, "json": False, "quiet": False, "config_file": None}


def _global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's copy does not overwrite what was given before the subcommand
    parser.add_argument("--url", default=argparse.SUPPRESS, help=f"the server (default: ${ENV_URL} or the login file)")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="results as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    parser.add_argument(
        "--config-file", default=argparse.SUPPRESS, help=f"the settings file (default: {config_path()}; $CYTO_CONFIG)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyto",
        description=(
            "Command line for the cytology annotation platform. The server and token come from "
            f"${ENV_URL} and ${ENV_TOKEN}, or from `cyto login`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cyto {__version__} (API {API_VERSION})")
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        _global_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    login = command(commands, "login", cmd_login, "store the server's URL and an API token (file mode 0600)")
    login.add_argument("--username", help="sign in with this user's password and create a token for this machine")
    login.add_argument("--token-name", default="cyto command line", help="the created token's name")
    login.add_argument("--token-stdin", action="store_true", help="read the token from stdin instead of a prompt")

    command(commands, "whoami", cmd_whoami, "the token's user, the server and its API version")

    projects = commands.add_parser("projects", help="projects").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    command(projects, "list", cmd_projects_list, "the projects you are a member of")

    upload = command(commands, "upload", cmd_upload, "upload a folder of images (or files) with their metadata")
    upload.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_FILE")
    upload.add_argument("--project", type=int, required=True)
    upload.add_argument("--bethesda", help="Bethesda category: I..VI (also 1..6 or B1..B6)")
    upload.add_argument("--stain")
    upload.add_argument("--magnification")
    upload.add_argument("--slide", help="slide code")
    upload.add_argument("--split", choices=("train", "validation", "test"))
    upload.add_argument("--recursive", action="store_true", help="also the folders' sub-folders")
    upload.add_argument("--batch-size", type=int, default=20, help="files per request (default 20)")
    upload.add_argument("--no-skip-existing", action="store_true", help="send files already in the project too")

    export = command(commands, "export", cmd_export, "export a project to a file (streamed, or via a server job)")
    export.add_argument("kind", choices=Exports.KINDS)
    export.add_argument("--project", type=int, required=True)
    export.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    export.add_argument("--layer", choices=("annotation", "verified", "proposal"))
    export.add_argument("--model-version", type=int, help="with --layer proposal")
    export.add_argument("--split", help="train,validation,test (comma-separated)")
    export.add_argument("--bethesda", help="categories, comma-separated (I..VI)")
    export.add_argument("--class-ids", help="class ids, comma-separated")
    export.add_argument("--image-ids", help="image ids, comma-separated")
    export.add_argument("--segmentation", choices=("polygon", "rle"))
    export.add_argument("--gzip", action="store_true", help="COCO as .json.gz")
    export.add_argument("--include-empty", action="store_true", help="list images without cells too")
    export.add_argument("--object-type", choices=("annotation", "detection"), help="GeoJSON objects")
    export.add_argument("--dataset-id", type=int, help="nnU-Net dataset id")
    export.add_argument("--async", dest="run_async", action="store_true", help="run it as a job on the server")
    export.add_argument("--no-wait", action="store_true", help="with a job: print it instead of waiting")

    imports = commands.add_parser("import", help="import annotations").add_subparsers(
        dest="sub", required=True, metavar="FORMAT"
    )
    coco = command(imports, "coco", cmd_import_coco, "import a COCO JSON file into the annotation layer")
    coco.add_argument("file", type=Path)
    coco.add_argument("--project", type=int, required=True)
    coco.add_argument("--images", type=Path, help="a zip of the images not yet in the project")
    coco.add_argument("--dry-run", action="store_true", help="check and report, store nothing")
    coco.add_argument("--create-categories", action="store_true", help="create classes for unknown categories")
    coco.add_argument("--multipart", choices=MULTIPART, help="segmentations of several polygons (default merge)")
    geojson = command(
        imports, "geojson", cmd_import_geojson, "import QuPath's GeoJSON objects into one image's annotation layer"
    )
    geojson.add_argument("file", type=Path)
    geojson.add_argument("--image", type=int, required=True)
    geojson.add_argument("--revision", type=int, help="the layer's revision it is based on (default: the current one)")
    geojson.add_argument("--mode", choices=("append", "replace"), default="append")
    geojson.add_argument("--class-map", metavar="JSON", help='{"QuPath name": class id, name or null}, or @file.json')
    geojson.add_argument("--default-class", help="class (id or name) of objects with an unknown or no classification")
    geojson.add_argument("--multipart", choices=MULTIPART, help="MultiPolygons (default merge)")
    geojson.add_argument("--holes", choices=("refuse", "fill"), help="polygons with holes (default refuse)")
    geojson.add_argument("--dry-run", action="store_true", help="check and report, write nothing")

    train = command(commands, "train", cmd_train, "start a training job")
    train.add_argument("--project", type=int, required=True)
    train.add_argument("--kind", choices=JOB_KINDS, default="two_stage")
    train.add_argument("--preset", choices=("default", "fast", "tiny"))
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--config", dest="config", metavar="JSON", help="the job's config as JSON, or @file.json")
    train.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="e.g. cellpose.n_epochs=20")
    train.add_argument("--snapshot", type=int, help="train on this dataset snapshot")
    train.add_argument("--wait", action="store_true", help="follow the job to its end")
    train.add_argument("--log", action="store_true", help="with --wait: print the job's log as it grows")

    job = command(commands, "job", cmd_job, "show, follow or cancel a training job")
    job.add_argument("job", type=int)
    job.add_argument("--wait", action="store_true", help="follow it to its end")
    job.add_argument("--log", action="store_true", help="print its log")
    job.add_argument("--cancel", action="store_true", help="ask it to stop")

    models = commands.add_parser("models", help="the model registry").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    models_list = command(models, "list", cmd_models_list, "versions with their metrics side by side")
    models_list.add_argument("--project", type=int, required=True)
    models_list.add_argument("--kind", choices=MODEL_KINDS)
    promote = command(models, "promote", cmd_models_promote, "make a version active (the pre-segmenter)")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason")
    rollback = command(models, "rollback", cmd_models_rollback, "go back to the version the active one replaced")
    rollback.add_argument("--project", type=int, required=True)
    rollback.add_argument("--kind", choices=MODEL_KINDS, required=True)

    cells = commands.add_parser("cells", help="an image's cells").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    pull = command(cells, "pull", cmd_cells_pull, "read a layer's cells, or a slide's viewport (--bbox)")
    pull.add_argument("--image", type=int, required=True)
    pull.add_argument("--bbox", metavar="X0,Y0,X1,Y1", help="only cells whose bounding box meets it (image pixels)")
    pull.add_argument("--layer", choices=("annotation", "proposal", "verified"), default="annotation")
    pull.add_argument("--model-version", type=int, help="with --layer proposal")
    pull.add_argument("--page-size", type=int, help="with --bbox: cells per request (server default 5000)")
    pull.add_argument("-o", "--output", type=Path, help="write {revision, cells} as JSON to this file")
    patch = command(cells, "patch", cmd_cells_patch, "save a delta (added, changed, deleted cells) of a layer")
    patch.add_argument("delta", metavar="DELTA", help='{"added": [], "changed": [], "deleted": []}, @file or -')
    patch.add_argument("--image", type=int, required=True)
    patch.add_argument("--revision", type=int, required=True, help="the layer's revision the delta is based on")

    regions = commands.add_parser("regions", help="regions of interest").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    regions_list = command(regions, "list", cmd_regions_list, "an image's regions")
    regions_list.add_argument("--image", type=int, required=True)
    create = command(regions, "create", cmd_regions_create, "draw a region")
    create.add_argument("--image", type=int, required=True)
    create.add_argument("--polygon", required=True, metavar="JSON", help="[[x, y], ...] (image pixels), or @file.json")
    create.add_argument("--name")
    update = command(regions, "update", cmd_regions_update, "rename or redraw a region")
    update.add_argument("region", type=int)
    update.add_argument("--image", type=int, required=True)
    update.add_argument("--polygon", metavar="JSON", help="[[x, y], ...], or @file.json")
    update.add_argument("--name")
    delete = command(regions, "delete", cmd_regions_delete, "delete a region (its cells stay)")
    delete.add_argument("region", type=int)
    delete.add_argument("--image", type=int, required=True)
    region_preseg = command(regions, "presegment", cmd_regions_presegment, "pre-segment one region of a slide")
    region_preseg.add_argument("region", type=int)
    region_preseg.add_argument("--image", type=int, required=True)
    region_preseg.add_argument("--model-version", type=int, help="default: the project's pre-segmenter")

    tiles = commands.add_parser("tiles", help="a slide's tile pyramid").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    tiles_download = command(tiles, "download", cmd_tiles_download, "save a level's tiles as DIR/LEVEL/COL_ROW.jpeg")
    tiles_download.add_argument("--image", type=int, required=True)
    tiles_download.add_argument("--level", type=int, help="0 (one pixel) .. the full resolution (the default)")
    tiles_download.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")

    queue = command(commands, "queue", cmd_queue, "what to annotate, review or adjudicate next")
    queue.add_argument("--project", type=int, required=True)
    queue.add_argument("--limit", type=int, default=5)
    return parser


def _client(args: argparse.Namespace) -> Client:
    settings = settings_resolve(args.url, None, path=Path(args.config_file) if args.config_file else None)
    return Client(settings.url, settings.token)


def _print_error(exc: BaseException) -> None:
    if isinstance(exc, ValidationError) and exc.errors:
        print(f"error: {exc.detail} (HTTP {exc.status_code})", file=sys.stderr)
        for key, message in list(exc.errors.items())[:50]:
            print(f"  {key}: {message}", file=sys.stderr)
        if len(exc.errors) > 50:
            print(f"  ... and {len(exc.errors) - 50} more", file=sys.stderr)
        return
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, ConflictError) and exc.conflicts:
        for conflict in exc.conflicts[:50]:
            when = f" at revision {conflict.revision}" if conflict.revision is not None else ""
            print(f"  {conflict.item}: cell {conflict.id} {conflict.reason}{when}", file=sys.stderr)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def _stdout_discard() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cyto`` with ``argv`` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    out = Output(as_json=args.json, quiet=args.quiet)
    try:
        code: int = args.handler(args, out)
        return code
    except argparse.ArgumentTypeError as exc:
        out.close()
        parser.error(str(exc))  # exits with EXIT_USAGE
    except IncompatibleServerError as exc:
        out.close()
        _print_error(exc)
        return EXIT_INCOMPATIBLE
    except ConfigurationError as exc:
        out.close()
        _print_error(exc)
        return EXIT_CONFIG
    except TransportError as exc:
        out.close()
        _print_error(exc)
        return EXIT_CONNECTION
    except (JobFailedError, WaitTimeoutError) as exc:
        out.close()
        _print_error(exc)
        return EXIT_JOB_FAILED
    except (ApiError, CytoError) as exc:
        out.close()
        _print_error(exc)
        return EXIT_ERROR
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        out.close()
        _print_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        out.close()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``cyto ... | head``): stop quietly as Unix tools do. Python flushes
        # stdout again at exit, so point it at /dev/null first or that flush fails too.
        _stdout_discard()
        return EXIT_BROKEN_PIPE
    finally:
        out.close()
    return EXIT_ERROR
