from __future__ import annotations

from typing import Any

import pytest

from annotations.models import AnnotationRevision, Cell, Layer
from tests.api.conftest import client_for
from tests.factories import image_create, square

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project: Any) -> Any:
    return image_create(project, width=200, height=100)


@pytest.fixture
def class_id(project: Any) -> int:
    return int(project.classes.get(name="thyroid cell").pk)


def _put(client: Any, image: Any, cells: list[dict[str, Any]], revision: int | None, **headers: Any) -> Any:
    body: dict[str, Any] = {"cells": cells}
    if revision is not None:
        body["revision"] = revision
    return client.put(f"/api/v1/images/{image.pk}/cells", body, format="json", **headers)


def test_replace_then_read_back(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    response = _put(client, image, [{"class_id": class_id, "polygon": square(10, 10)}], 0)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["revision"] == 1 and response["ETag"] == '"1"'
    cell = body["cells"][0]
    assert cell["bbox"] == [10, 10, 10, 10] and cell["area"] == 100 and cell["source"] == "manual"
    read = client.get(f"/api/v1/images/{image.pk}/cells")
    assert read.json()["cells"] == body["cells"] and read["ETag"] == '"1"'


def test_ids_kept_changed_and_deleted(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    first = _put(
        client,
        image,
        [{"class_id": class_id, "polygon": square(0, 0)}, {"class_id": class_id, "polygon": square(50, 50)}],
        0,
    ).json()
    keep, drop = first["cells"]
    moved = {"id": keep["id"], "class_id": class_id, "polygon": square(5, 5)}
    second = _put(client, image, [moved, {"class_id": class_id, "polygon": square(100, 20)}], 1).json()
    assert second["cells"][0]["id"] == keep["id"] and second["cells"][0]["polygon"][0] == [5, 5]
    assert not Cell.objects.filter(pk=drop["id"]).exists()
    summary = AnnotationRevision.objects.get(image=image, revision=2).summary
    assert summary == {"added": 1, "changed": 1, "deleted": 1}


def test_overlapping_cells_allowed(image: Any, annotator: Any, class_id: int) -> None:
    cells = [
        {"class_id": class_id, "polygon": square(10, 10, 20)},
        {"class_id": class_id, "polygon": square(15, 15, 20)},
    ]
    assert _put(client_for(annotator), image, cells, 0).status_code == 200


@pytest.mark.parametrize(
    "polygon,fragment",
    [
        ([[0, 0], [1, 1]], "at least 3 distinct"),
        ([[0, 0], [0, 0], [0, 0], [0, 0]], "at least 3 distinct"),
        ([[0, 0], [10, 0], [10, "a"]], "pair of numbers"),
        ([[True, False], [50, 50], [90, 1]], "pair of numbers"),  # once saved, it broke every export
        ([[0, 0], [10, 0], [10, None]], "pair of numbers"),
        ([[0, 0], [10, 0], [10, float("inf")]], "non-finite"),
        ([[0, 0], [300, 0], [300, 10]], "outside the image"),
        ([[0, 0], [10, 10], [10, 0], [0, 10]], "not a valid simple polygon"),
        ([[0, 0], [10, 0], [20, 0]], "zero area"),
        ("nope", "list of [x, y]"),
    ],
)
def test_invalid_polygons_named_by_index(
    image: Any, annotator: Any, class_id: int, polygon: Any, fragment: str
) -> None:
    cells = [{"class_id": class_id, "polygon": square(1, 1)}, {"class_id": class_id, "polygon": polygon}]
    if polygon == [[0, 0], [10, 0], [10, float("inf")]]:
        import json

        payload = json.dumps({"revision": 0, "cells": cells}).replace("Infinity", "1e999")
        response = client_for(annotator).put(
            f"/api/v1/images/{image.pk}/cells", payload, content_type="application/json"
        )
    else:
        response = _put(client_for(annotator), image, cells, 0)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert list(errors) == ["cells.1"] and fragment in errors["cells.1"], errors
    assert Cell.objects.count() == 0 and image.history.count() == 0


def test_bowtie_repaired_when_single_polygon(image: Any, annotator: Any, class_id: int) -> None:
    # A self-touching ring that make_valid turns into exactly one polygon is repaired.
    polygon = [[0, 0], [20, 0], [20, 20], [10, 20], [10, 10], [10, 20], [0, 20]]
    response = _put(client_for(annotator), image, [{"class_id": class_id, "polygon": polygon}], 0)
    assert response.status_code == 200, response.content


def test_vertex_limit(image: Any, annotator: Any, class_id: int, settings: Any) -> None:
    settings.CELL_MAX_VERTICES = 5
    polygon = [[10 + i, 10 + (i % 2) * 3] for i in range(6)] + [[10, 40]]
    response = _put(client_for(annotator), image, [{"class_id": class_id, "polygon": polygon}], 0)
    assert response.status_code == 400 and "limit is 5" in response.json()["errors"]["cells.0"]


def test_foreign_class_and_duplicate_ids(image: Any, annotator: Any, class_id: int) -> None:
    from tests.factories import ProjectFactory

    foreign = ProjectFactory().classes.first().pk
    cells = [
        {"class_id": foreign, "polygon": square(1, 1)},
        {"id": 5, "class_id": class_id, "polygon": square(1, 1)},
        {"id": 5, "class_id": class_id, "polygon": square(1, 1)},
    ]
    errors = _put(client_for(annotator), image, cells, 0).json()["errors"]
    assert "not a class of this project" in errors["cells.0"] and "twice" in errors["cells.2"]


def test_revision_required(image: Any, annotator: Any, class_id: int) -> None:
    response = _put(client_for(annotator), image, [], None)
    assert response.status_code == 400 and "revision" in response.json()["errors"]
    response = _put(client_for(annotator), image, [], None, HTTP_IF_MATCH='"0"')
    assert response.status_code == 200 and response.json()["revision"] == 1


def test_two_clients_second_gets_409_with_server_state(image: Any, annotator: Any, expert: Any, class_id: int) -> None:
    a, b = client_for(annotator), client_for(expert)
    base = a.get(f"/api/v1/images/{image.pk}/cells").json()["revision"]
    assert b.get(f"/api/v1/images/{image.pk}/cells").json()["revision"] == base
    assert _put(a, image, [{"class_id": class_id, "polygon": square(1, 1)}], base).status_code == 200
    stale = _put(b, image, [{"class_id": class_id, "polygon": square(50, 50)}], base)
    assert stale.status_code == 409
    body = stale.json()
    assert body["revision"] == base + 1 and [c["polygon"][0] for c in body["cells"]] == [[1, 1]]
    # Nothing of the stale write was stored.
    assert Cell.objects.filter(image=image).count() == 1 and image.history.count() == 1
    # Resolving by re-saving on the server's revision works.
    assert _put(b, image, [{"class_id": class_id, "polygon": square(50, 50)}], body["revision"]).status_code == 200


def test_idempotent_retry_applies_once(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    cells = [{"class_id": class_id, "polygon": square(1, 1)}]
    first = _put(client, image, cells, 0, HTTP_IDEMPOTENCY_KEY="save-1")
    retry = _put(client, image, cells, 0, HTTP_IDEMPOTENCY_KEY="save-1")
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json()
    assert image.history.count() == 1 and Cell.objects.filter(image=image).count() == 1
    # Without the key, the same stale request is a conflict.
    assert _put(client, image, cells, 0).status_code == 409
    # The same key for a different body is refused.
    other = _put(client, image, [{"class_id": class_id, "polygon": square(9, 9)}], 1, HTTP_IDEMPOTENCY_KEY="save-1")
    assert other.status_code == 400 and "Idempotency-Key" in other.json()["errors"]


def test_permissions_on_cells(image: Any, outsider: Any, class_id: int, project: Any) -> None:
    assert client_for(outsider).get(f"/api/v1/images/{image.pk}/cells").status_code == 404
    assert _put(client_for(outsider), image, [], 0).status_code == 404


def test_history_and_restore(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    one = _put(client, image, [{"class_id": class_id, "polygon": square(1, 1)}], 0).json()
    _put(client, image, [], 1)
    history = client.get(f"/api/v1/images/{image.pk}/history").json()["results"]
    assert [h["revision"] for h in history] == [2, 1] and history[0]["summary"]["deleted"] == 1
    assert history[0]["author"] == annotator.username
    stale = client.post(f"/api/v1/images/{image.pk}/history/1/restore", {"revision": 1}, format="json")
    assert stale.status_code == 409
    restored = client.post(f"/api/v1/images/{image.pk}/history/1/restore", {"revision": 2}, format="json")
    assert restored.status_code == 200, restored.content
    body = restored.json()
    assert body["revision"] == 3 and body["cells"][0]["id"] == one["cells"][0]["id"]
    assert body["cells"][0]["polygon"] == one["cells"][0]["polygon"]
    missing = client.post(f"/api/v1/images/{image.pk}/history/99/restore", {"revision": 3}, format="json")
    assert missing.status_code == 400 and "revision" in missing.json()["errors"]


def test_get_cells_query_count_is_constant(
    image: Any, annotator: Any, class_id: int, django_assert_max_num_queries: Any
) -> None:
    cells = [{"class_id": class_id, "polygon": square(1 + (i % 18) * 10, 1 + (i // 18) * 10, 8)} for i in range(150)]
    client = client_for(annotator)
    assert _put(client, image, cells, 0).status_code == 200
    with django_assert_max_num_queries(5):
        assert len(client.get(f"/api/v1/images/{image.pk}/cells").json()["cells"]) == 150


def test_replace_query_count_does_not_grow_with_cells(
    image: Any, annotator: Any, class_id: int, django_assert_max_num_queries: Any
) -> None:
    cells = [{"class_id": class_id, "polygon": square(1 + (i % 18) * 10, 1 + (i // 18) * 10, 8)} for i in range(150)]
    with django_assert_max_num_queries(16):
        assert _put(client_for(annotator), image, cells, 0).status_code == 200


def test_proposals_layer_is_separate(image: Any, annotator: Any, class_id: int) -> None:
    Cell.objects.create(
        image=image,
        layer=Layer.PROPOSAL,
        cell_class_id=class_id,
        polygon=square(1, 1),
        bbox_x=1,
        bbox_y=1,
        bbox_w=10,
        bbox_h=10,
        area=100,
        score=0.9,
    )
    client = client_for(annotator)
    assert client.get(f"/api/v1/images/{image.pk}/cells").json()["cells"] == []
    assert len(client.get(f"/api/v1/images/{image.pk}/cells?layer=proposal").json()["cells"]) == 1
    assert _put(client, image, [], 0).status_code == 200
    assert Cell.objects.filter(image=image, layer=Layer.PROPOSAL).count() == 1
    assert client.get(f"/api/v1/images/{image.pk}/cells?layer=nope").status_code == 400


def test_history_stores_deltas_and_restore_replays_them(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    a = _put(client, image, [{"class_id": class_id, "polygon": square(1, 1)}], 0).json()["cells"][0]
    two = _put(
        client,
        image,
        [
            {"id": a["id"], "class_id": class_id, "polygon": square(1, 1)},
            {"class_id": class_id, "polygon": square(40, 40)},
        ],
        1,
    ).json()
    b = two["cells"][1]
    _put(client, image, [{"id": a["id"], "class_id": class_id, "polygon": square(5, 5)}], 2)
    # Revision 2 changed only B (A was sent unchanged), revision 3 moved A and deleted B.
    changes = dict(AnnotationRevision.objects.filter(image=image).values_list("revision", "changes"))
    assert [c["id"] for c in changes[2]["upserted"]] == [b["id"]] and changes[2]["deleted"] == []
    assert [c["id"] for c in changes[3]["upserted"]] == [a["id"]] and changes[3]["deleted"] == [b["id"]]
    # The layer at a revision, for a preview before restoring it.
    at_two = client.get(f"/api/v1/images/{image.pk}/history/2").json()
    assert at_two["revision"] == 2 and {c["id"]: c["polygon"][0] for c in at_two["cells"]} == {
        a["id"]: [1, 1],
        b["id"]: [40, 40],
    }
    assert set(at_two["cells"][0]) == {"id", "class_id", "polygon"}
    assert client.get(f"/api/v1/images/{image.pk}/history/0").json() == {"revision": 0, "cells": []}
    assert client.get(f"/api/v1/images/{image.pk}/history/99").status_code == 404
    restored = client.post(f"/api/v1/images/{image.pk}/history/2/restore", {"revision": 3}, format="json").json()
    assert {c["id"]: c["polygon"][0] for c in restored["cells"]} == {a["id"]: [1, 1], b["id"]: [40, 40]}


def test_old_idempotency_records_are_pruned(image: Any, annotator: Any, class_id: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from core.models import IdempotencyRecord
    from core.tasks import idempotency_prune

    _put(client_for(annotator), image, [{"class_id": class_id, "polygon": square(1, 1)}], 0, HTTP_IDEMPOTENCY_KEY="k1")
    _put(client_for(annotator), image, [], 1, HTTP_IDEMPOTENCY_KEY="k2")
    IdempotencyRecord.objects.filter(key="k1").update(created_at=timezone.now() - timedelta(days=3))
    assert idempotency_prune() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["k2"]


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_requests_with_one_key_apply_once_and_both_get_the_answer(
    image: Any, annotator: Any, class_id: int
) -> None:
    """The second waits for the first and replays its response (it used to get 409: the first
    had moved the revision on)."""
    import threading
    import time
    from unittest import mock

    from django.db import connection

    from annotations.services import cells as cell_services

    real = cell_services.cells_replace
    entered = threading.Event()

    def slow(**kwargs: Any) -> Any:
        entered.set()
        time.sleep(0.6)  # the second request arrives while the first is writing
        return real(**kwargs)

    body = [{"class_id": class_id, "polygon": square(10, 10)}]
    answers: list[Any] = [None, None]

    def send(i: int) -> None:
        try:
            answers[i] = _put(client_for(annotator), image, body, 0, HTTP_IDEMPOTENCY_KEY="same-save")
        finally:
            connection.close()

    with mock.patch.object(cell_services, "cells_replace", side_effect=slow) as replace:
        first = threading.Thread(target=send, args=(0,))
        first.start()
        assert entered.wait(10)
        second = threading.Thread(target=send, args=(1,))
        second.start()
        first.join(30)
        second.join(30)
    assert [a.status_code for a in answers] == [200, 200], [a.content for a in answers]
    assert answers[0].json() == answers[1].json() and answers[0].json()["revision"] == 1
    assert replace.call_count == 1
    assert AnnotationRevision.objects.filter(image=image).count() == 1
    assert Cell.objects.filter(image=image, layer=Layer.ANNOTATION).count() == 1
