"""The API keeps the promises of its own ``/openapi.json``: schemathesis generates requests for
every operation from the schema (valid ones and ones the schema forbids), sends them over real
HTTP with a real org's credentials, and checks that none is a 5xx and that every answer's status
code, content type, headers and body are the ones the schema documents.

A failure prints the check that failed and a curl command reproducing the request.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Org, link_phone, served
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

#: Per operation, mode and credential; ``WANOTIFY_SCHEMATHESIS_EXAMPLES=200`` digs deeper.
pytestmark = pytest.mark.proofs

EXAMPLES_PER_OPERATION = int(os.environ.get("WANOTIFY_SCHEMATHESIS_EXAMPLES", "12"))

#: Operations that answer with a stream that lasts as long as the client reads (SSE, the
#: simulated network's socket): a request-and-response check would wait for an end that never
#: comes. tests/sessions and tests/transports read them as streams.
STREAMS = {
    ("GET", "/api/sessions/current/events"),
    ("POST", "/sim/net/connect"),
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Thousands of requests in a minute from one org: rate limits would answer 429 for most."""
    settings.rate_limit_enabled = False
    return settings


@dataclass
class Target:
    base_url: str
    credentials: dict[str, dict[str, str]]


async def api_key(client: httpx.AsyncClient, org: Org) -> str:
    response = await client.post(
        "/api/api-keys", json={"name": "fuzzer", "role": "admin"}, headers=org.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def run_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    who: str,
    headers: dict[str, str],
    failures: list[str],
) -> None:
    """Property: for any generated request, every check holds. Runs in a thread (schemathesis
    calls over blocking HTTP while the app serves on the test's event loop)."""

    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        checks = [*CHECKS, negative_data_rejection] if mode.is_negative else CHECKS
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=10)

    try:
        check()
    except Unsatisfiable:
        # Nothing in the request can break the schema (no parameters, or only free-form
        # strings): there is no invalid request to send.
        assert mode.is_negative, f"{operation.label}: no valid request could be generated"
    except (Exception, BaseExceptionGroup) as exc:  # one report per operation, all tried
        failures.append(f"{operation.label} ({mode.value}, {who}):\n{exc}")


@pytest.mark.timeout(300)  # about a minute on SQLite on a loaded 2-core machine
async def test_every_operation_keeps_its_schema(
    app: FastAPI, client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, "+15550001111")
    schema_doc = (await client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(schema_doc)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if (result.ok().method.upper(), result.ok().path) not in STREAMS
    ]
    credentials = {
        "owner token": org.headers,
        "api key": {"Authorization": f"Bearer {await api_key(client, org)}"},
    }
    failures: list[str] = []
    async with served(app) as base_url:
        for who, headers in credentials.items():
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    await asyncio.to_thread(
                        run_operation, operation, mode, base_url, who, headers, failures
                    )
    assert not failures, "\n\n".join(failures)
