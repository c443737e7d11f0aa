"""Load benchmark over loopback: gunicorn + PostgreSQL, N concurrent clients for S seconds.

Each client is a doctor of its own (a user with an API token) working on an image of its own:
it GETs the image's cells, PUTs them back with one cell moved (with the revision it last got,
so every save must apply) and lists the project's images, in a 5 : 3 : 2 mix, back to back.
Printed: requests/s, p50/p95/p99 per operation, errors (any answer but 200, or no answer), and
lost saves: after the run each image's cells are read back and compared with the last save
its client had acknowledged (a lost save is an acknowledged write that is not there).
Targets: 0 errors and 0 lost saves.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cytoplatform_load \\
        .venv/bin/python bench/load_bench.py --clients 10 50 --seconds 60

The database named in DATABASE_URL is created (or emptied) and migrated; the server runs with
that database and the configured cache (CACHE_URL) with DEBUG off, like production.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("DJANGO_DEBUG", "false")
os.environ.setdefault("PLATFORM_VAR_DIR", str(ROOT / "var" / "load-bench"))

CELLS = 40  # cells per image: a busy field's worth of polygons per save
MIX = (("get_cells", 5), ("put_cells", 3), ("list_images", 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(clients: int) -> tuple[int, list[dict[str, Any]]]:
    """A fresh database with one project, and per client a user, a token and an image."""
    _database_ensure(os.environ.get("DATABASE_URL", ""))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:  # start from an empty schema
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)

    from annotations.models import Role
    from annotations.services.tokens import api_token_create
    from tests.factories import ProjectFactory, UserFactory, image_create, member, square

    owner: Any = UserFactory()
    project: Any = ProjectFactory(created_by=owner)
    class_id = project.classes.get(model_label=1).pk
    out = []
    for i in range(clients):
        user = member(project, Role.ANNOTATOR)
        image = image_create(project, seed=i, width=512, height=512)
        _, token = api_token_create(user=user, name="load")
        cells = [
            {"class_id": class_id, "polygon": square(10 + 12 * (k % 40), 10 + 12 * (k // 40), 8)} for k in range(CELLS)
        ]
        out.append({"token": token, "image": image.pk, "cells": cells})
    connection.close()
    return project.pk, out


def _database_ensure(url: str) -> None:
    """Create the database DATABASE_URL names when it does not exist yet."""
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("load_bench needs DATABASE_URL=postgres://...")
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


class Client(threading.Thread):
    def __init__(self, base: str, project_id: int, spec: dict[str, Any], until: float, seed: int) -> None:
        super().__init__(daemon=True)
        import random

        import requests

        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {spec['token']}"
        self.base, self.project_id, self.spec, self.until = base, project_id, spec, until
        self.random = random.Random(seed)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.revision = 0
        self.acked: list[dict[str, Any]] | None = None  # the cells of the last acknowledged save

    def _call(self, op: str, method: str, url: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            response = self.session.request(method, self.base + url, timeout=30, **kwargs)
        except Exception as exc:
            self.errors.append(f"{op}: {type(exc).__name__}")
            return None
        self.latencies[op].append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            self.errors.append(f"{op}: {response.status_code}")
            return None
        return response

    def run(self) -> None:
        image = self.spec["image"]
        cells_url = f"/api/v1/images/{image}/cells"
        # start from what is stored (an earlier run may have saved), or put the client's cells
        current = self._call("get_cells", "GET", cells_url)
        if current is not None and current.json()["revision"] > 0:
            body = current.json()
        else:
            first = self._call("put_cells", "PUT", cells_url, json={"revision": 0, "cells": self.spec["cells"]})
            body = first.json() if first is not None else None
        if body is not None:
            self.revision, self.acked = body["revision"], body["cells"]
        ops = [name for name, weight in MIX for _ in range(weight)]
        step = 0
        while time.monotonic() < self.until:
            op = self.random.choice(ops)
            if op == "get_cells":
                self._call(op, "GET", cells_url)
            elif op == "list_images":
                self._call(op, "GET", f"/api/v1/projects/{self.project_id}/images?page_size=50")
            elif self.acked is not None:
                step += 1
                cells = [{"id": c["id"], "class_id": c["class_id"], "polygon": c["polygon"]} for c in self.acked]
                moved = cells[step % len(cells)]
                dx = 1.0 if step % 2 else -1.0
                moved["polygon"] = [[x + dx, y] for x, y in moved["polygon"]]
                response = self._call(op, "PUT", cells_url, json={"revision": self.revision, "cells": cells})
                if response is not None:
                    body = response.json()
                    self.revision, self.acked = body["revision"], body["cells"]


def _shape(cells: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted((c["id"], json.dumps(c["polygon"])) for c in cells)


def run_load(base: str, project_id: int, specs: list[dict[str, Any]], clients: int, seconds: float) -> None:
    import requests

    until = time.monotonic() + seconds
    threads = [Client(base, project_id, specs[i], until, seed=i) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lost = 0
    for t in threads:  # what each client last had acknowledged must be what is stored
        stored = requests.get(
            f"{base}/api/v1/images/{t.spec['image']}/cells",
            headers={"Authorization": f"Bearer {t.spec['token']}"},
            timeout=30,
        ).json()
        if t.acked is not None and (stored["revision"] != t.revision or _shape(stored["cells"]) != _shape(t.acked)):
            lost += 1
    latencies: dict[str, list[float]] = defaultdict(list)
    for t in threads:
        for op, values in t.latencies.items():
            latencies[op].extend(values)
    errors = [e for t in threads for e in t.errors]
    total = sum(len(v) for v in latencies.values())
    print(
        f"\n{clients} clients, {elapsed:.0f} s: {total / elapsed:.0f} requests/s, "
        f"errors {len(errors)}, lost saves {lost}"
    )
    for op, values in sorted(latencies.items()):
        q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        print(f"  {op:12s} n={len(values):6d}  p50 {q[49]:7.1f} ms  p95 {q[94]:7.1f} ms  p99 {q[98]:7.1f} ms")
    if errors:
        kinds: dict[str, int] = defaultdict(int)
        for e in errors:
            kinds[e] += 1
        print("  errors:", dict(kinds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    args = parser.parse_args()

    project_id, specs = prepare(max(args.clients))
    port = _free_port()
    log = Path(os.environ["PLATFORM_VAR_DIR"]) / "gunicorn.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", str(args.workers), "--threads", str(args.threads), "--timeout", "120"],
        cwd=ROOT, env=os.environ | {"DJANGO_ALLOWED_HOSTS": "127.0.0.1"}, stdout=log.open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/api/v1/schema", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"gunicorn did not start; see {log}") from None
                time.sleep(0.5)
        print(
            f"gunicorn {args.workers} workers x {args.threads} threads on 127.0.0.1:{port}; "
            f"database {os.environ.get('DATABASE_URL', '').rsplit('/', 1)[-1]}; {os.cpu_count()} CPUs"
        )
        for clients in args.clients:
            run_load(base, project_id, specs, clients, args.seconds)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
