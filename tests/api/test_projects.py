from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.staticfiles import finders

from annotations.models import AuditEvent, Role
from tests.api.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_staff_creates_project_with_default_classes_and_becomes_admin() -> None:
    staff = UserFactory(is_staff=True)
    response = client_for(staff).post("/api/v1/projects", {"name": "Thyroid B4-B6"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert [c["name"] for c in body["classes"]] == ["thyroid cell", "erythrocyte"]
    assert [c["model_label"] for c in body["classes"]] == [1, 2]
    assert body["my_role"] == "admin" and body["experts_required"] == 2


def test_project_created_with_its_own_classes() -> None:
    from annotations.models import Project

    staff = UserFactory(is_staff=True)
    client = client_for(staff)
    classes = [
        {"name": "follicular cell", "color": "#112233"},
        {"name": "RBC", "model_label": 2},
        {"name": "lymphocyte", "model_label": 1},
    ]
    response = client.post("/api/v1/projects", {"name": "Own classes", "classes": classes}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()["classes"]
    assert [(c["name"], c["model_label"], c["order"]) for c in body] == [
        ("follicular cell", 1, 0),
        ("RBC", 2, 1),
        ("lymphocyte", 1, 2),
    ]
    assert body[0]["color"] == "#112233" and len({c["color"] for c in body}) == 3  # distinct defaults
    # refused, naming the entry, and no project is created
    count = Project.objects.count()
    for bad, field in (
        ([{"name": "a"}, {"name": "A"}], "classes.1.name"),
        ([{"name": "a", "color": "red"}], "classes.0.color"),
        ([{"name": "a", "model_label": 3}], "classes"),
        ([{"color": "#112233"}], "classes"),
        ([], "classes"),
    ):
        response = client.post("/api/v1/projects", {"name": "x", "classes": bad}, format="json")
        assert response.status_code == 400, bad
        assert field in response.json()["errors"], response.json()
    # a field the endpoint does not read is a 400, not silently dropped
    response = client.post("/api/v1/projects", {"name": "x", "labels": ["a"]}, format="json")
    assert response.status_code == 400 and response.json()["errors"] == {"labels": ["unknown field"]}
    assert Project.objects.count() == count


def test_non_staff_cannot_create_project(annotator: Any) -> None:
    assert client_for(annotator).post("/api/v1/projects", {"name": "x"}, format="json").status_code == 403


def test_project_validation_names_fields() -> None:
    staff = UserFactory(is_staff=True)
    response = client_for(staff).post(
        "/api/v1/projects", {"name": "x", "experts_required": 2, "quorum": 3, "match_iou": 1.5}, format="json"
    )
    assert response.status_code == 400
    assert {"quorum", "match_iou"} <= set(response.json()["errors"])


def test_list_shows_only_member_projects(project: Any, annotator: Any, outsider: Any) -> None:
    ids = [p["id"] for p in client_for(annotator).get("/api/v1/projects").json()["results"]]
    assert ids == [project.pk]
    assert client_for(outsider).get(f"/api/v1/projects/{project.pk}").status_code == 404


def test_superuser_sees_everything(project: Any) -> None:
    root = UserFactory(is_superuser=True, is_staff=True)
    body = client_for(root).get(f"/api/v1/projects/{project.pk}").json()
    assert body["my_role"] == "admin"


@pytest.mark.parametrize("role,code", [(Role.ANNOTATOR, 403), (Role.EXPERT, 403), (Role.ADMIN, 200)])
def test_only_admin_edits_project(project: Any, role: str, code: int) -> None:
    from tests.factories import member

    user = member(project, role)
    response = client_for(user).patch(f"/api/v1/projects/{project.pk}", {"experts_required": 3}, format="json")
    assert response.status_code == code
    if code == 200:
        assert response.json()["experts_required"] == 3
        assert AuditEvent.objects.filter(project=project, action="project.update").exists()


def test_patch_rejects_unknown_fields(project: Any, admin_user: Any) -> None:
    response = client_for(admin_user).patch(f"/api/v1/projects/{project.pk}", {"id": 9, "created_by": 1}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"id", "created_by"}


def test_members_add_change_remove(project: Any, admin_user: Any) -> None:
    doctor = UserFactory(username="doctor")
    client = client_for(admin_user)
    added = client.post(
        f"/api/v1/projects/{project.pk}/members", {"username": "doctor", "role": "annotator"}, format="json"
    )
    assert added.status_code == 201
    membership_id = added.json()["id"]
    assert (
        client.patch(
            f"/api/v1/projects/{project.pk}/members/{membership_id}", {"role": "expert"}, format="json"
        ).json()["role"]
        == "expert"
    )
    assert client_for(doctor).get(f"/api/v1/projects/{project.pk}").json()["my_role"] == "expert"
    assert client.delete(f"/api/v1/projects/{project.pk}/members/{membership_id}").status_code == 204
    assert client_for(doctor).get(f"/api/v1/projects/{project.pk}").status_code == 404


def test_member_errors(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    response = client.post(
        f"/api/v1/projects/{project.pk}/members", {"username": "ghost", "role": "annotator"}, format="json"
    )
    assert response.status_code == 400 and "username" in response.json()["errors"]
    response = client.post(
        f"/api/v1/projects/{project.pk}/members", {"username": admin_user.username, "role": "boss"}, format="json"
    )
    assert response.status_code == 400 and "role" in response.json()["errors"]
    only_admin = project.memberships.get(user=admin_user)
    assert client.delete(f"/api/v1/projects/{project.pk}/members/{only_admin.pk}").status_code == 409


def test_members_are_invited_by_username_or_email(project: Any, admin_user: Any) -> None:
    UserFactory(username="dr.sato", email="Sato@Clinic.example")
    UserFactory(username="twin1", email="twin@clinic.example")
    UserFactory(username="twin2", email="twin@clinic.example")
    client = client_for(admin_user)
    url = f"/api/v1/projects/{project.pk}/members"
    added = client.post(url, {"username": " sato@clinic.example ", "role": "expert"}, format="json")
    assert added.status_code == 201 and (added.json()["username"], added.json()["role"]) == ("dr.sato", "expert")
    # an address two users share names nobody
    response = client.post(url, {"username": "twin@clinic.example", "role": "expert"}, format="json")
    assert response.status_code == 400 and "e-mail" in response.json()["errors"]["username"]


def test_classes_are_editable(project: Any, admin_user: Any, annotator: Any) -> None:
    client = client_for(admin_user)
    created = client.post(
        f"/api/v1/projects/{project.pk}/classes", {"name": "colloid", "color": "#aabbcc"}, format="json"
    )
    assert created.status_code == 201
    class_id = created.json()["id"]
    assert (
        client.patch(f"/api/v1/projects/{project.pk}/classes/{class_id}", {"color": "#000000"}, format="json").json()[
            "color"
        ]
        == "#000000"
    )
    bad = client.post(f"/api/v1/projects/{project.pk}/classes", {"name": "colloid", "color": "red"}, format="json")
    assert bad.status_code == 400 and {"name", "color"} <= set(bad.json()["errors"])
    assert (
        client_for(annotator).post(f"/api/v1/projects/{project.pk}/classes", {"name": "z"}, format="json").status_code
        == 403
    )
    assert client.delete(f"/api/v1/projects/{project.pk}/classes/{class_id}").status_code == 204


def test_audit_log_visible_to_admin_only(project: Any, admin_user: Any, annotator: Any) -> None:
    client_for(admin_user).patch(f"/api/v1/projects/{project.pk}", {"description": "d"}, format="json")
    assert client_for(admin_user).get(f"/api/v1/projects/{project.pk}/audit").json()["count"] >= 1
    assert client_for(annotator).get(f"/api/v1/projects/{project.pk}/audit").status_code == 403


def test_openapi_schema_and_docs(annotator: Any) -> None:
    client = client_for(annotator)
    schema = client.get("/api/v1/schema", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/images/{image_id}/cells" in paths
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    # Swagger UI comes from the app's own static files (it was a blank page offline, from a CDN)
    page = docs.content.decode()
    assert "cdn." not in page and "unpkg" not in page and "jsdelivr" not in page
    scripts = re.findall(r'src="/static/([^"]+)"', page)
    assert any("swagger-ui-bundle" in s for s in scripts)
    assert all(finders.find(s) for s in scripts), scripts


def test_admin_deletes_project_with_cells(project: Any, admin_user: Any) -> None:
    from annotations.models import Cell, Project
    from tests.factories import image_create, square

    image = image_create(project)
    class_id = project.classes.first().pk
    Cell.objects.create(
        image=image, cell_class_id=class_id, polygon=square(1, 1), bbox_x=1, bbox_y=1, bbox_w=10, bbox_h=10, area=100
    )
    # A class in use cannot be deleted alone...
    assert client_for(admin_user).delete(f"/api/v1/projects/{project.pk}/classes/{class_id}").status_code == 409
    # ...but the whole project can.
    assert client_for(admin_user).delete(f"/api/v1/projects/{project.pk}").status_code == 204
    assert not Project.objects.filter(pk=project.pk).exists() and not Cell.objects.exists()
