"""Property-based tests of the whole API from its own OpenAPI document (schemathesis), with the admin token.

For every operation, schemathesis generates requests (valid and invalid) and checks that no answer is a 5xx,
every status code is documented, and every body and content type matches the document. Not checked: that
every schema-violating request is refused (`negative_data_rejection`): like most HTTP services, the API
ignores unknown query parameters and lets pydantic read `false` as 0. Bounded: 25 examples per operation by default
(PLANNER_SCHEMATHESIS_EXAMPLES), no deadline (the store is real). It runs on PostgreSQL (the fleet's
store, and the stricter one: NUL characters, integer ranges); the route tests cover both backends.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine

from planner.api.main import create_app
from planner.core.config import Settings
from planner.db.session import session_factory
from tests.api.conftest import ADMIN, ADMIN_TOKEN
from tests.conftest import BACKENDS

BACKEND = "postgresql" if "postgresql" in BACKENDS else BACKENDS[0]
EXAMPLES = int(os.environ.get("PLANNER_SCHEMATHESIS_EXAMPLES", "25"))
"""Examples per operation: 25 in the suite (10 before issue 28); `PLANNER_SCHEMATHESIS_EXAMPLES=200` for a deep run."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _document_app() -> FastAPI:
    """An app only for its OpenAPI document (the document does not depend on the store)."""
    engine = create_engine("sqlite://")
    return create_app(
        Settings(environment="test", admin_token=SecretStr(ADMIN_TOKEN)), sessions=session_factory(engine)
    )


# Loaded once at import; each test then calls the per-test app over a real store of its backend.
schema = schemathesis.openapi.from_asgi("/openapi.json", _document_app())


@schema.parametrize()
@pytest.mark.parametrize("backend", [BACKEND], indirect=True)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi(case: schemathesis.Case, app: FastAPI) -> None:
    case.call_and_validate(headers=ADMIN, checks=CHECKS, app=app)
