"""Fuzz every operation of the OpenAPI schema in-process over ASGI (schemathesis runs the app's lifespan, so
the real stack answers): no 5xx, every status documented, every body matching its schema."""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import make_settings


@pytest.fixture(scope="module")
def fuzz_app(model_repository, mongo_uri, tmp_path_factory):
    from pipeline.api.app import create_app

    root = tmp_path_factory.mktemp("fuzz")
    config = make_settings(model_repository, "edge", root, mongo_uri)
    config.api.service_file = root / "service.json"
    return create_app(config, public_url="http://localhost"), config.api.service_file


# CI runs a fixed set of examples (no flaky red); FUZZ_EXAMPLES=500 FUZZ_SEED=anything for a longer random hunt.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.slow
def test_no_operation_fails_or_breaks_its_schema(fuzz_app):
    app, service_file = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan: the real stack
    token = json.loads(service_file.read_text())["token"]
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=FUZZ_SEED is None)  # fmt: skip
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"X-API-Key": token}, checks=CHECKS)

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then fail once with all of them
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
