"""Property-based fuzzing of every operation from the OpenAPI schema (Schemathesis), against the
live test server with an admin's API token. Required: no 5xx, and what comes back conforms to
the schema (content type and, for a documented status, the body). Bounded to fit CI:
``FUZZ_EXAMPLES`` examples per operation (default 4)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from annotations.models import Role
from annotations.services.tokens import api_token_create
from tests.factories import image_create, member
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))


@pytest.fixture
def fuzz_admin(live_server: Any) -> Any:
    """An admin of a project with images, cells, members and a second image."""
    sp = synthetic_project(splits={"train": 1, "test": 1}, size=64, n_cells=3, n_erythrocytes=1)
    member(sp.project, Role.ANNOTATOR)
    member(sp.project, Role.EXPERT)
    image_create(sp.project, width=64, height=48)
    return sp.admin


def test_no_server_error_and_answers_conform(live_server: Any, fuzz_admin: Any) -> None:
    """Each operation in turn, ``EXAMPLES`` generated requests each; every failure is collected
    and reported together (operation, the check that failed, how to reproduce it)."""
    headers = {"Authorization": f"Bearer {api_token_create(user=fuzz_admin, name='schema')[1]}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/schema?format=json", headers=headers)
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    # deletions last, so that the others still find the project and its images
    ordered = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: op.method.upper() == "DELETE")
    for operation in ordered:
        operations += 1
        # a fresh token each time: the fuzzed DELETE auth/tokens/{id} may revoke the last one
        token = api_token_create(user=fuzz_admin, name=operation.label[:90])[1]
        try:
            _fuzz(operation, live_server.url, {"Authorization": f"Bearer {token}"}, statuses)
        except (Exception, BaseExceptionGroup) as exc:  # a check failed: go on, report all at the end
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 70
    print("fuzzing statuses:", dict(sorted(statuses.items())))
    # the token worked: most requests got past authentication, many were answered 2xx
    assert statuses[401] < sum(statuses.values()) / 10 and sum(v for k, v in statuses.items() if k < 300) >= 50
    assert failures == [], "\n\n".join(failures)


def _fuzz(operation: Any, base_url: str, headers: dict[str, str], statuses: Counter[int]) -> None:
    """``EXAMPLES`` generated requests of one operation, every check applied to each answer."""

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call_and_validate(
            base_url=base_url,
            headers=headers,
            checks=[not_a_server_error, content_type_conformance, response_schema_conformance],
            timeout=60,
        )
        statuses[response.status_code] += 1

    run()
