"""Cells by viewport (GET cells?bbox=) and saves by delta (PATCH cells) of issue #14."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotations.models import AnnotationRevision, Cell, ImageStatus, Layer
from tests.api.conftest import client_for
from tests.factories import annotation_cells_bulk_create, image_create, square

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project: Any) -> Any:
    return image_create(project, width=1000, height=800)


@pytest.fixture
def class_id(project: Any) -> int:
    return int(project.classes.get(name="thyroid cell").pk)


def _url(image: Any) -> str:
    return f"/api/v1/images/{image.pk}/cells"


def _patch(client: Any, image: Any, base: int | None, **delta: Any) -> Any:
    body: dict[str, Any] = dict(delta)
    if base is not None:
        body["base_revision"] = base
    return client.patch(_url(image), body, format="json")


def _grid(
    image: Any, class_id: int, *, columns: int = 10, rows: int = 8, size: float = 60, step: float = 100, at: float = 20
) -> list[int]:
    """A grid of square cells ``step`` px apart, as one revision (1); their ids, row by row."""
    polygons = [square(at + c * step, at + r * step, size) for r in range(rows) for c in range(columns)]
    return annotation_cells_bulk_create(image=image, class_id=class_id, polygons=polygons)


# --------------------------------------------------------------------------- viewport reads


def test_bbox_returns_the_cells_meeting_the_box(image: Any, annotator: Any, class_id: int) -> None:
    ids = _grid(image, class_id)
    client = client_for(annotator)
    # Columns 2..3 and rows 1..2: the box meets cells whose bbox spans [220, 280] x [120, 180] ...
    body = client.get(f"{_url(image)}?bbox=250,150,350,250").json()
    assert body["revision"] == 1 and body["next_after"] is None
    assert sorted(c["id"] for c in body["cells"]) == sorted([ids[12], ids[13], ids[22], ids[23]])
    assert all(c["revision"] == 1 for c in body["cells"])
    # A box touching a cell's edge counts; one in the gaps between cells finds none.
    assert [c["id"] for c in client.get(f"{_url(image)}?bbox=0,0,20,20").json()["cells"]] == [ids[0]]
    assert client.get(f"{_url(image)}?bbox=85,85,115,115").json()["cells"] == []


def test_bbox_pages(image: Any, annotator: Any, class_id: int) -> None:
    ids = _grid(image, class_id)
    client = client_for(annotator)
    seen: list[int] = []
    after = None
    for _ in range(10):
        query = "?bbox=0,0,1000,800&limit=30" + (f"&after={after}" if after is not None else "")
        body = client.get(_url(image) + query).json()
        seen += [c["id"] for c in body["cells"]]
        after = body["next_after"]
        if after is None:
            break
    assert seen == sorted(ids)


@pytest.mark.parametrize(
    "query,field",
    [
        ("bbox=1,2,3", "bbox"),
        ("bbox=a,b,c,d", "bbox"),
        ("bbox=10,10,5,20", "bbox"),
        ("bbox=0,0,nan,10", "bbox"),
        ("bbox=0,0,10,10&limit=0", "limit"),
        ("bbox=0,0,10,10&limit=x", "limit"),
        ("bbox=0,0,10,10&after=-1", "after"),
        ("limit=10", "limit"),
    ],
)
def test_bbox_validation(image: Any, annotator: Any, query: str, field: str) -> None:
    response = client_for(annotator).get(f"{_url(image)}?{query}")
    assert response.status_code == 400 and field in response.json()["errors"], response.content


def test_bbox_read_query_count_is_constant(
    image: Any, annotator: Any, class_id: int, django_assert_max_num_queries: Any
) -> None:
    _grid(image, class_id)
    with django_assert_max_num_queries(5):
        assert len(client_for(annotator).get(f"{_url(image)}?bbox=0,0,300,300").json()["cells"]) == 9


# --------------------------------------------------------------------------- saves by delta


def test_delta_adds_changes_and_deletes(image: Any, annotator: Any, class_id: int, project: Any) -> None:
    ids = _grid(image, class_id)
    erythrocyte = int(project.classes.get(name="erythrocyte").pk)
    response = _patch(
        client_for(annotator),
        image,
        1,
        added=[{"class_id": class_id, "polygon": square(90, 90, 8)}],
        changed=[
            {"id": ids[0], "polygon": square(25, 25, 50)},
            {"id": ids[1], "class_id": erythrocyte, "revision": 1},
        ],
        deleted=[ids[2], {"id": ids[3], "revision": 1}],
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["revision"] == 2 and response["ETag"] == '"2"'
    added = body["added"][0]
    assert added["bbox"] == [90, 90, 8, 8] and added["revision"] == 2 and added["author"] == annotator.pk
    assert [c["id"] for c in body["changed"]] == [ids[0], ids[1]] and body["deleted"] == [ids[2], ids[3]]
    assert Cell.objects.get(pk=ids[0]).bbox_x == 25 and Cell.objects.get(pk=ids[1]).cell_class_id == erythrocyte
    assert Cell.objects.get(pk=ids[1]).polygon == square(120, 20, 60)  # a class change keeps the outline
    assert not Cell.objects.filter(pk__in=ids[2:4]).exists()
    assert Cell.objects.filter(image=image, layer=Layer.ANNOTATION).count() == 80 + 1 - 2
    revision = AnnotationRevision.objects.get(image=image, revision=2)
    assert revision.action == "delta" and revision.summary == {"added": 1, "changed": 2, "deleted": 2}
    image.refresh_from_db()
    assert image.revision == 2 and image.status == ImageStatus.ANNOTATING and image.annotator_id == annotator.pk


def test_two_clients_in_different_regions_both_succeed(image: Any, annotator: Any, expert: Any, class_id: int) -> None:
    ids = _grid(image, class_id)
    a, b = client_for(annotator), client_for(expert)
    base = a.get(f"{_url(image)}?bbox=0,0,300,300").json()["revision"]
    assert b.get(f"{_url(image)}?bbox=700,500,1000,800").json()["revision"] == base
    first = _patch(a, image, base, changed=[{"id": ids[0], "polygon": square(22, 22, 55)}], deleted=[ids[1]])
    assert first.status_code == 200
    # The second doctor's base is stale, but nothing of theirs meets the first doctor's edits.
    second = _patch(
        b,
        image,
        base,
        changed=[{"id": ids[79], "polygon": square(925, 725, 50)}],
        added=[{"class_id": class_id, "polygon": square(890, 690, 8)}],
    )
    assert second.status_code == 200, second.content
    assert second.json()["revision"] == base + 2
    assert Cell.objects.get(pk=ids[0]).bbox_w == 55 and Cell.objects.get(pk=ids[79]).bbox_x == 925
    assert not Cell.objects.filter(pk=ids[1]).exists()


def test_same_cell_is_409_with_the_servers_version(image: Any, annotator: Any, expert: Any, class_id: int) -> None:
    ids = _grid(image, class_id)
    a, b = client_for(annotator), client_for(expert)
    assert _patch(a, image, 1, changed=[{"id": ids[5], "polygon": square(530, 30, 40)}]).status_code == 200
    stale = _patch(b, image, 1, changed=[{"id": ids[5], "polygon": square(510, 10, 70)}], deleted=[ids[6]])
    assert stale.status_code == 409
    body = stale.json()
    assert body["revision"] == 2 and "detail" in body
    assert body["conflicts"] == [{"item": "changed.0", "id": ids[5], "reason": "changed", "revision": 2}]
    assert [c["id"] for c in body["cells"]] == [ids[5]] and body["cells"][0]["polygon"] == square(530, 30, 40)
    assert body["deleted"] == []
    # All or nothing: the deletion in the refused delta did not happen either.
    assert Cell.objects.filter(pk=ids[6]).exists() and image.history.count() == 2
    # Sending the cell's revision as read from the 409 resolves it.
    again = _patch(b, image, 1, changed=[{"id": ids[5], "revision": 2, "polygon": square(510, 10, 70)}])
    assert again.status_code == 200, again.content


def test_a_cell_deleted_meanwhile_is_a_conflict(image: Any, annotator: Any, expert: Any, class_id: int) -> None:
    ids = _grid(image, class_id)
    assert _patch(client_for(annotator), image, 1, deleted=[ids[7]]).status_code == 200
    stale = _patch(client_for(expert), image, 1, changed=[{"id": ids[7], "class_id": class_id}])
    assert stale.status_code == 409
    body = stale.json()
    assert body["conflicts"][0]["reason"] == "deleted" and body["deleted"] == [ids[7]] and body["cells"] == []
    # Deleting it again is a conflict too; a cell that never was in this layer is a 400.
    assert _patch(client_for(expert), image, 1, deleted=[ids[7]]).status_code == 409
    unknown = _patch(client_for(expert), image, 2, deleted=[10**9])
    assert unknown.status_code == 400 and "deleted.0.id" in unknown.json()["errors"]


def test_overlap_rule(image: Any, annotator: Any, expert: Any, class_id: int) -> None:
    ids = _grid(image, class_id, columns=3, rows=2)
    a, b = client_for(annotator), client_for(expert)
    # The first doctor adds a cell in the empty right part of the image.
    assert _patch(a, image, 1, added=[{"class_id": class_id, "polygon": square(600, 100, 50)}]).status_code == 200
    # An added cell overlapping it (stale base) conflicts ...
    overlapping = _patch(b, image, 1, added=[{"class_id": class_id, "polygon": square(640, 140, 30)}])
    assert overlapping.status_code == 409
    conflict = overlapping.json()["conflicts"][0]
    assert conflict["item"] == "added.0" and conflict["reason"] == "overlaps" and conflict["revision"] == 2
    # ... as does a changed cell moved onto it; one edge to edge with it does not, nor does an
    # outline over a cell written before the base (the doctor saw it when drawing).
    moved = _patch(b, image, 1, changed=[{"id": ids[2], "polygon": square(620, 120, 20)}])
    assert moved.status_code == 409 and moved.json()["conflicts"][0]["item"] == "changed.0"
    touching = _patch(b, image, 1, added=[{"class_id": class_id, "polygon": square(650, 100, 20)}])
    assert touching.status_code == 200, touching.content
    over_old = _patch(b, image, 1, added=[{"class_id": class_id, "polygon": square(30, 30, 20)}])
    assert over_old.status_code == 200, over_old.content


@pytest.mark.parametrize(
    "delta,key",
    [
        ({"added": [{"class_id": "CLASS", "polygon": [[0, 0], [10, 0], [5, 5000]]}]}, "added.0.polygon"),
        ({"added": [{"class_id": "CLASS", "polygon": "x"}]}, "added.0.polygon"),
        ({"added": [{"class_id": 999999, "polygon": [[0, 0], [10, 0], [5, 5]]}]}, "added.0.class_id"),
        ({"added": [{"id": 5, "class_id": "CLASS", "polygon": [[0, 0], [10, 0], [5, 5]]}]}, "added.0.id"),
        ({"changed": [{"id": "FIRST", "polygon": [[0, 0], [10, 10], [10, 0], [0, 10]]}]}, "changed.0.polygon"),
        ({"changed": [{"id": "FIRST"}]}, "changed.0"),
        ({"changed": [{"id": "x", "class_id": "CLASS"}]}, "changed.0.id"),
        ({"changed": [{"id": "FIRST", "revision": "1", "class_id": "CLASS"}]}, "changed.0.revision"),
        ({"changed": [{"id": "FIRST", "class_id": "CLASS"}], "deleted": ["FIRST"]}, "deleted.0.id"),
        ({"deleted": [True]}, "deleted.0.id"),
        ({"deleted": "FIRST"}, "deleted"),
        ({}, "added"),
        ({"cells": []}, "cells"),
    ],
)
def test_delta_validation(image: Any, annotator: Any, class_id: int, delta: dict[str, Any], key: str) -> None:
    ids = _grid(image, class_id, columns=2, rows=1)

    def fill(value: Any) -> Any:
        if value == "CLASS":
            return class_id
        if value == "FIRST":
            return ids[0]
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    response = _patch(client_for(annotator), image, 1, **fill(delta))
    assert response.status_code == 400 and key in response.json()["errors"], response.content
    assert image.history.count() == 1 and Cell.objects.filter(image=image).count() == 2


def test_base_revision_required_and_checked(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    add = [{"class_id": class_id, "polygon": square(1, 1)}]
    missing = _patch(client, image, None, added=add)
    assert missing.status_code == 400 and "base_revision" in missing.json()["errors"]
    ahead = _patch(client, image, 5, added=add)
    assert ahead.status_code == 400 and "base_revision" in ahead.json()["errors"]
    header = client.patch(_url(image), {"added": add}, format="json", HTTP_IF_MATCH='"0"')
    assert header.status_code == 200 and header.json()["revision"] == 1


def test_delta_keeps_the_lock_and_roles(image: Any, annotator: Any, outsider: Any, class_id: int) -> None:
    ids = _grid(image, class_id, columns=2, rows=1)
    assert _patch(client_for(outsider), image, 1, deleted=[ids[0]]).status_code == 404
    image.status = ImageStatus.SUBMITTED
    image.save(update_fields=["status"])
    locked = _patch(client_for(annotator), image, 1, deleted=[ids[0]])
    assert locked.status_code == 409 and locked.json()["status"] == ImageStatus.SUBMITTED
    assert Cell.objects.filter(pk=ids[0]).exists()


def test_delta_idempotent_retry(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    body = {"base_revision": 0, "added": [{"class_id": class_id, "polygon": square(1, 1)}]}
    first = client.patch(_url(image), body, format="json", HTTP_IDEMPOTENCY_KEY="d-1")
    retry = client.patch(_url(image), body, format="json", HTTP_IDEMPOTENCY_KEY="d-1")
    assert first.status_code == retry.status_code == 200 and first.json() == retry.json()
    assert Cell.objects.filter(image=image).count() == 1 and image.history.count() == 1


def test_history_preview_and_restore_after_deltas(image: Any, annotator: Any, class_id: int) -> None:
    ids = _grid(image, class_id, columns=3, rows=1)
    client = client_for(annotator)
    two = _patch(client, image, 1, added=[{"class_id": class_id, "polygon": square(500, 500)}], deleted=[ids[0]])
    new_id = two.json()["added"][0]["id"]
    assert _patch(client, image, 2, changed=[{"id": ids[1], "polygon": square(130, 30, 30)}]).status_code == 200
    history = client.get(f"/api/v1/images/{image.pk}/history").json()["results"]
    assert [(h["revision"], h["action"]) for h in history] == [(3, "delta"), (2, "delta"), (1, "import")]
    at_two = {c["id"]: c["polygon"][0] for c in client.get(f"/api/v1/images/{image.pk}/history/2").json()["cells"]}
    assert at_two == {ids[1]: [120, 20], ids[2]: [220, 20], new_id: [500, 500]}
    restored = client.post(f"/api/v1/images/{image.pk}/history/1/restore", {"revision": 3}, format="json")
    assert restored.status_code == 200, restored.content
    assert {c["id"]: c["polygon"][0] for c in restored.json()["cells"]} == {
        ids[0]: [20, 20],
        ids[1]: [120, 20],
        ids[2]: [220, 20],
    }
    # The restore wrote every cell it brought back at revision 4: a delta based on 3 that
    # changes one of them conflicts, one that changes nothing restored does not.
    restored_revisions = dict(Cell.objects.filter(image=image).values_list("pk", "revision"))
    assert restored_revisions[ids[0]] == 4 and restored_revisions[ids[1]] == 4
    assert _patch(client, image, 3, changed=[{"id": ids[0], "class_id": class_id}]).status_code == 409
    assert _patch(client, image, 4, changed=[{"id": ids[0], "class_id": class_id}]).status_code == 200


def test_whole_layer_put_still_works_and_records_revisions(image: Any, annotator: Any, class_id: int) -> None:
    client = client_for(annotator)
    put = client.put(
        _url(image), {"revision": 0, "cells": [{"class_id": class_id, "polygon": square(1, 1)}]}, format="json"
    )
    assert put.status_code == 200 and put.json()["cells"][0]["revision"] == 1
    cell_id = put.json()["cells"][0]["id"]
    # A delta after a PUT, and a PUT after a delta.
    assert _patch(client, image, 1, changed=[{"id": cell_id, "polygon": square(3, 3)}]).status_code == 200
    again = client.put(
        _url(image),
        {"revision": 2, "cells": [{"id": cell_id, "class_id": class_id, "polygon": square(3, 3)}]},
        format="json",
    )
    assert again.status_code == 200 and again.json()["cells"][0]["revision"] == 2  # unchanged: not rewritten


def _delta_queries(image: Any, user: Any, class_id: int, ids: list[int], step: float, size: float) -> int:
    """Queries of a delta of 4 changed, 4 added and 2 deleted cells on a grid made by ``_grid``
    (at=2); checks that none reads the layer unrestricted."""
    client = client_for(user)
    # each moved cell stays inside its own grid square, each added one lies in a gap: no overlap
    changed = [{"id": ids[i], "polygon": square(3 + step * i, 3, size - 2)} for i in range(4)]
    added = [{"class_id": class_id, "polygon": square(3 + size + step * i, 3 + size, 2)} for i in range(4)]
    with CaptureQueriesContext(connection) as queries:
        response = _patch(client, image, 1, changed=changed, added=added, deleted=ids[4:6])
        assert response.status_code == 200, response.content
    for query in queries.captured_queries:
        sql = query["sql"]
        if 'FROM "annotations_cell"' in sql and sql.lstrip().upper().startswith("SELECT"):
            assert '"annotations_cell"."id" IN' in sql or '"annotations_cell"."revision" >' in sql, sql
    return len(queries.captured_queries)


def test_delta_query_count_does_not_grow_with_the_layer(project: Any, annotator: Any, class_id: int) -> None:
    small = image_create(project, seed=1, width=1000, height=800)
    large = image_create(project, seed=2, width=1000, height=800)
    small_ids = _grid(small, class_id, columns=10, rows=2, size=6, step=10, at=2)
    large_ids = _grid(large, class_id, columns=100, rows=40, size=6, step=10, at=2)  # 4,000 cells
    a = _delta_queries(small, annotator, class_id, small_ids, 10, 6)
    b = _delta_queries(large, annotator, class_id, large_ids, 10, 6)
    # 23: access, classes, the lock, the cells by id, the recent cells in the box, the deletion
    # (with the review rows pointing at the cells), the update, the insert, the image, its first
    # status change and audit, the history row, savepoints
    assert a == b and b <= 24, (a, b)


def test_migration_fills_cell_revisions_from_the_history(image: Any, annotator: Any, class_id: int) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module("annotations.migrations.0012_cell_revision")
    client = client_for(annotator)
    put = client.put(
        _url(image),
        {
            "revision": 0,
            "cells": [
                {"class_id": class_id, "polygon": square(1, 1)},
                {"class_id": class_id, "polygon": square(50, 50)},
            ],
        },
        format="json",
    ).json()
    a, b = (c["id"] for c in put["cells"])
    client.put(
        _url(image),
        {
            "revision": 1,
            "cells": [
                {"id": a, "class_id": class_id, "polygon": square(1, 1)},
                {"id": b, "class_id": class_id, "polygon": square(60, 60)},
            ],
        },
        format="json",
    )
    expected = dict(Cell.objects.filter(image=image).values_list("pk", "revision"))
    assert expected == {a: 1, b: 2}
    Cell.objects.filter(image=image).update(revision=0)  # as before the migration
    migration.cell_revisions_from_history(apps, None)
    assert dict(Cell.objects.filter(image=image).values_list("pk", "revision")) == expected


def test_history_preview_of_a_box(image: Any, annotator: Any, class_id: int) -> None:
    ids = _grid(image, class_id, columns=3, rows=2)
    client = client_for(annotator)
    assert _patch(client, image, 1, deleted=[ids[0]]).status_code == 200
    url = f"/api/v1/images/{image.pk}/history/1?bbox=0,0,150,100"
    assert sorted(c["id"] for c in client.get(url).json()["cells"]) == [ids[0], ids[1]]
    assert [c["id"] for c in client.get(f"/api/v1/images/{image.pk}/history/2?bbox=0,0,150,100").json()["cells"]] == [
        ids[1]
    ]
    assert client.get(f"/api/v1/images/{image.pk}/history/1?bbox=1,2").status_code == 400
