"""The API's contract, checked by Schemathesis against a running server (pytest's live_server)
with a valid key: for every operation, generated requests never get a 5xx, and every answer
(status, content type, headers, body) is one the OpenAPI schema at /api/v1/openapi.json allows.

The examples are bounded so the whole module runs in well under a minute."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .api_helpers import make_key

EXAMPLES = 60  # per mode: about 10 s each on a laptop
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def contract_key(transactional_db, settings) -> str:
    settings.API_RATE_LIMIT = 0  # the generated requests come fast; the limit has its own tests
    return make_key("contract")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_keeps_to_its_schema_and_never_fails(live_server, contract_key, mode):
    # Schemathesis' pytest loader (from_fixture) reads a private attribute pytest 9 removed, so
    # the schema's strategy drives Hypothesis directly: every operation, valid and invalid data.
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/openapi.json")
    assert len(list(schema.get_all_operations())) >= 3
    headers = {"Authorization": f"Bearer {contract_key}"}
    seen: set[str] = set()
    statuses: set[int] = set()

    @given(case=schema.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def check(case) -> None:
        seen.add(f"{case.method} {case.operation.path}")
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses.add(response.status_code)

    check()
    assert statuses & {200, 201, 404, 422}
    if mode == GenerationMode.POSITIVE:
        # The key was good throughout: the operations themselves answered. (Negative cases may
        # spoil the Authorization header too, and get 401 in the schema's shape.)
        assert 401 not in statuses
    assert {"POST /api/v1/images", "GET /api/v1/images", "GET /api/v1/images/{image_id}"} <= seen


def test_the_schema_is_openapi_3_1_and_covers_the_images_operations(client):
    document = client.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert {
        ("POST", "/api/v1/images"),
        ("GET", "/api/v1/images"),
        ("GET", "/api/v1/images/{image_id}"),
    } <= operations
    schemes = document["components"]["securitySchemes"]
    assert {s["scheme"] for s in schemes.values()} == {"bearer"}
