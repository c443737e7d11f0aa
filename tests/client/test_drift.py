"""The client and the server's API must not drift apart.

The schema is the one drf-spectacular generates from the server's code in-process (what
``/api/v1/schema`` serves), so a renamed path, parameter or field fails here, in the server's
test suite, before a script user finds out. Checked:

- ``cytoclient.API_VERSION`` (and the package's version) is the schema's ``info.version``;
- every endpoint of ``cytoclient/endpoints.py`` (the client sends nothing else: the transport
  refuses parameters and fields an endpoint does not list) exists with its method; its path
  parameters are the schema's; each query parameter it may send is declared; its body has the
  content type the client sends and declares each field the client may send; every field the
  schema requires is one the client always sends;
- every field a response class reads is declared in the response it reads it from, nested
  classes included, and those it cannot do without are there;
- every endpoint of the table is used by the client.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from cytoclient import API_VERSION, __version__, models
from cytoclient.endpoints import SCHEMA, Endpoint, all_endpoints
from cytoclient.models import Model

from tests.client.conftest import CLIENT_DIR

PACKAGE = CLIENT_DIR / "cytoclient"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return dict(SchemaGenerator().get_schema(request=None, public=True))


def _resolve(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    """A schema object with its ``$ref`` (and a single ``allOf``) followed."""
    while isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            node = schema["components"]["schemas"][name]
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node
    return {}


def _operation(schema: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    paths = schema["paths"]
    assert endpoint.schema_path in paths, f"{endpoint}: no such path in the server's schema"
    operations = paths[endpoint.schema_path]
    assert endpoint.method in operations, (
        f"{endpoint}: the server has {', '.join(m.upper() for m in operations if m in METHODS)} there"
    )
    return dict(operations[endpoint.method])


def test_client_version_is_the_schema_version(schema: dict[str, Any]) -> None:
    from django.conf import settings

    assert schema["info"]["version"] == settings.SPECTACULAR_SETTINGS["VERSION"]
    assert API_VERSION == schema["info"]["version"], "bump cytoclient/_version.py with the API"
    pyproject = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__
    assert __version__.split(".")[:2] == API_VERSION.split(".")[:2], "the client's major.minor follow the API's"


@pytest.mark.parametrize("endpoint", all_endpoints(), ids=str)
def test_every_endpoint_the_client_calls_is_in_the_schema(schema: dict[str, Any], endpoint: Endpoint) -> None:
    if endpoint is SCHEMA:
        from django.urls import resolve

        # the schema does not describe itself; the URL must still serve it
        assert resolve(endpoint.schema_path).url_name == "schema"
        return
    operation = _operation(schema, endpoint)
    parameters = [p for p in operation.get("parameters", []) if isinstance(p, dict)]
    path_names = {p["name"] for p in parameters if p.get("in") == "path"}
    assert path_names == set(re.findall(r"\{(\w+)\}", endpoint.path)), f"{endpoint}: path parameters differ"

    declared_query = {p["name"] for p in parameters if p.get("in") == "query"}
    undeclared = endpoint.query - declared_query
    assert not undeclared, f"{endpoint}: the client sends query parameters the server does not declare: {undeclared}"
    required_query = {p["name"] for p in parameters if p.get("in") == "query" and p.get("required")}
    assert required_query <= endpoint.query, f"{endpoint}: the server requires {required_query - endpoint.query}"

    body = operation.get("requestBody")
    if not endpoint.body:
        if body is not None:
            content = next(iter(body.get("content", {}).values()), {})
            required = set(_resolve(schema, content.get("schema")).get("required", []))
            assert not required, f"{endpoint}: the server requires body fields {required} the client never sends"
        return
    assert body is not None, f"{endpoint}: the server takes no body"
    media = "multipart/form-data" if endpoint.multipart else "application/json"
    assert media in body.get("content", {}), f"{endpoint}: the server does not take {media}"
    request_schema = _resolve(schema, body["content"][media].get("schema"))
    properties = set(request_schema.get("properties", {}))
    unknown = endpoint.body - properties
    assert not unknown, f"{endpoint}: the client sends body fields the server does not declare: {unknown}"
    required = set(request_schema.get("required", []))
    assert required <= endpoint.body_required, (
        f"{endpoint}: the server requires {required - endpoint.body_required}, which the client may leave out"
    )


def _answer_classes() -> list[type[Model]]:
    return [
        value
        for value in vars(models).values()
        if isinstance(value, type) and issubclass(value, Model) and value is not Model and value.api_sources
    ]


def _response_schema(schema: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    operation = schema["paths"][path][method]
    response = operation["responses"][str(status)]
    content = response.get("content", {})
    node = _resolve(schema, content.get("application/json", next(iter(content.values()), {})).get("schema"))
    # a page of results, or a list: the class reads one item
    if set(node.get("properties", {})) >= {"count", "results"}:
        node = _resolve(schema, node["properties"]["results"])
    if node.get("type") == "array":
        node = _resolve(schema, node.get("items"))
    return node


# Fields a class reads that the schema does not list: added by the view beside the serializer.
NOT_IN_SCHEMA = {
    ("TrainingJob", "log_length"),  # training.api.views.JobDetailView
    ("Cells", "accepted"),  # the proposal accept's answer (CellsOut in the schema)
}


def _check_class(schema: dict[str, Any], cls: type[Model], node: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    properties = node.get("properties")
    if not properties:
        return [f"{where}: the schema describes no fields for {cls.__name__}"]
    hints = typing.get_type_hints(cls)
    required = set(cls.required_fields())
    for f in dataclasses.fields(cls):
        if f.name == "raw" or (cls.__name__, f.name) in NOT_IN_SCHEMA:
            continue
        if f.name not in properties:
            kind = "needs" if f.name in required else "reads"
            problems.append(f"{where}: {cls.__name__} {kind} {f.name!r}, which the schema does not have")
            continue
        nested = _nested_model(hints[f.name])
        if nested is not None:
            child = _resolve(schema, properties[f.name])
            if child.get("type") == "array":
                child = _resolve(schema, child.get("items"))
            problems += _check_class(schema, nested, child, f"{where}.{f.name}")
    return problems


def _nested_model(hint: Any) -> type[Model] | None:
    candidates = [hint, *typing.get_args(hint)]
    for candidate in candidates:
        for inner in [candidate, *typing.get_args(candidate)]:
            if isinstance(inner, type) and issubclass(inner, Model):
                return inner
    return None


@pytest.mark.parametrize("cls", _answer_classes(), ids=lambda c: c.__name__)
def test_every_field_the_client_reads_is_in_the_answer(schema: dict[str, Any], cls: type[Model]) -> None:
    problems: list[str] = []
    for method, path, status in cls.api_sources:
        node = _response_schema(schema, method, path, status)
        problems += _check_class(schema, cls, node, f"{method.upper()} {path} {status}")
    assert not problems, "\n".join(problems)


def test_every_endpoint_is_used_by_the_client() -> None:
    names = {name for name, value in vars(sys.modules["cytoclient.endpoints"]).items() if isinstance(value, Endpoint)}
    names.add("EXPORTS")
    used: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        if path.name == "endpoints.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ep":
                used.add(node.attr)
            if isinstance(node, ast.ImportFrom) and node.module == "cytoclient.endpoints":
                used.update(alias.name for alias in node.names)
    assert names - used == set(), f"endpoints listed but never called: {names - used}"


def test_the_client_imports_nothing_of_the_server() -> None:
    """The package installs alone (httpx its one dependency): no Django, no server package."""
    allowed = set(sys.stdlib_module_names) | {"httpx", "cytoclient", "__future__"}
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in allowed]
    assert offenders == []
    # ... and no server package imports it (the server never depends on its client)
    root = CLIENT_DIR.parent
    servers = [p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "tests"]
    assert {"config", "core", "annotations", "interchange", "training"} <= {p.name for p in servers}
    users = []
    for package in servers:
        for path in package.rglob("*.py"):
            if "tests" in path.relative_to(root).parts:
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cytoclient" for a in node.names):
                    users.append(str(path.relative_to(root)))
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cytoclient":
                    users.append(str(path.relative_to(root)))
    assert users == []
    pyproject = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())
    assert [re.split(r"[<>=!~ ]", d)[0] for d in pyproject["project"]["dependencies"]] == ["httpx"]
    assert (PACKAGE / "py.typed").exists()
    assert pyproject["project"]["scripts"]["cyto"] == "cytoclient.cli:main"


def test_drift_is_detected(schema: dict[str, Any]) -> None:
    """The checks above fail on a drifted endpoint (so a pass means something)."""
    renamed = Endpoint("put", "images/{image_id}/cells", body=frozenset({"revision", "shapes"}))
    with pytest.raises(AssertionError, match="does not declare"):
        test_every_endpoint_the_client_calls_is_in_the_schema(schema, renamed)
    moved = Endpoint("get", "images/{image_id}/contours")
    with pytest.raises(AssertionError, match="no such path"):
        test_every_endpoint_the_client_calls_is_in_the_schema(schema, moved)
    wrong_query = Endpoint("get", "images/{image_id}/cells", query=frozenset({"layers"}))
    with pytest.raises(AssertionError, match="query parameters"):
        test_every_endpoint_the_client_calls_is_in_the_schema(schema, wrong_query)

    @dataclasses.dataclass
    class Drifted(Model):
        api_sources = (("get", "/api/v1/images/{image_id}", 200),)
        id: int
        filename: str  # the server calls it file_name

    node = _response_schema(schema, "get", "/api/v1/images/{image_id}", 200)
    assert _check_class(schema, Drifted, node, "image") == [
        "image: Drifted needs 'filename', which the schema does not have"
    ]


def test_the_table_matches_what_the_transport_enforces() -> None:
    """A call outside the table fails before it leaves the client."""
    from cytoclient import endpoints as ep
    from cytoclient._transport import Transport

    transport = Transport("http://127.0.0.1:9", "t", check_version=False)
    try:
        with pytest.raises(TypeError, match="no query parameter 'layers'"):
            transport.call(ep.CELLS_GET, {"image_id": 1}, query={"layers": "x"})
        with pytest.raises(TypeError, match="no body field shapes"):
            transport.call(ep.CELLS_SAVE, {"image_id": 1}, json={"revision": 1, "cells": [], "shapes": []})
        with pytest.raises(TypeError, match="needs revision"):
            transport.call(ep.CELLS_SAVE, {"image_id": 1}, json={"cells": []})
    finally:
        transport.close()


def test_docs_list_the_client() -> None:
    root = Path(__file__).resolve().parents[2]
    assert "docs/client.md" in (root / "README.md").read_text()
    assert (root / "docs" / "client.md").exists()
