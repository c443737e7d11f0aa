"""API latency benchmark: p50/p95 of GET all cells of a 270-cell image and of a full
replace-save of 270 cells (validation included), through Django's test client against the
configured database (PostgreSQL when DATABASE_URL points at it).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cytoplatform_bench .venv/bin/python bench/api_bench.py
Targets: GET p95 <= 30 ms, save p95 <= 60 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=270)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    import django

    django.setup()
    import io

    from django.conf import settings
    from django.db import connection
    from django.test.utils import get_runner, setup_test_environment  # noqa: F401
    from PIL import Image as PILImage
    from rest_framework.test import APIClient

    from annotations.services import images as image_services
    from cytoseg.backends.base import Instance
    from cytoseg.contours import instances_to_polygons
    from cytoseg.synthetic import generate_field
    from tests.factories import ProjectFactory, UserFactory, upload

    setup_test_environment()
    from config.runtime import gc_tune

    gc_tune()  # as config/wsgi.py does for the real server
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        settings.MEDIA_ROOT = str(ROOT / "var" / "bench-media")
        user: Any = UserFactory()
        project: Any = ProjectFactory(created_by=user)
        field = generate_field(seed=3, n_cells=args.cells, n_erythrocytes=0)
        buffer = io.BytesIO()
        PILImage.fromarray(field.image).save(buffer, format="PNG")
        image = image_services.image_upload_many(
            project=project, files=[upload("bench.png", buffer.getvalue())], metadata={}, uploaded_by=user
        )[0]
        instances = [Instance(x0=c.x0, y0=c.y0, mask=c.mask, label=1, score=1.0) for c in field.cells if c.label == 1]
        contours = instances_to_polygons(instances[: args.cells], min_area=4)
        class_id = project.classes.get(model_label=1).pk
        cells = [{"class_id": class_id, "polygon": [list(p) for p in c.points]} for c in contours]
        client = APIClient()
        client.force_authenticate(user)
        url = f"/api/v1/images/{image.pk}/cells"
        revision = client.put(url, {"revision": 0, "cells": cells}, format="json").json()["revision"]
        saved = json.loads(client.get(url).content)["cells"]
        vertices = sum(len(c["polygon"]) for c in saved)

        gets, saves = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            response = client.get(url)
            gets.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        body_cells = [{"id": c["id"], "class_id": c["class_id"], "polygon": c["polygon"]} for c in saved]
        for i in range(args.repeats):
            # Move one cell each time so every save really writes.
            moved = body_cells[i % len(body_cells)]
            step = 0.5 if max(x for x, _ in moved["polygon"]) < 1000 else -0.5
            moved["polygon"] = [
                [x + (step if (i // len(body_cells)) % 2 == 0 else -step), y] for x, y in moved["polygon"]
            ]
            # The body is encoded before timing: the number is the server's latency, not the client's.
            payload = json.dumps({"revision": revision, "cells": body_cells})
            started = time.perf_counter()
            response = client.generic("PUT", url, payload, content_type="application/json")
            saves.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content[:300]
            revision = json.loads(response.content)["revision"]

        def pct(values: list[float], q: float) -> float:
            return statistics.quantiles(values, n=100)[int(q) - 1]

        engine = connection.vendor
        print(f"database: {engine}; cells: {len(saved)}; vertices: {vertices}; repeats: {args.repeats}")
        print(
            f"GET cells     p50 {statistics.median(gets):6.1f} ms   p95 {pct(gets, 95):6.1f} ms   (target p95 <= 30 ms)"
        )
        print(
            f"replace-save  p50 {statistics.median(saves):6.1f} ms   p95 {pct(saves, 95):6.1f} ms"
            "   (target p95 <= 60 ms)"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
