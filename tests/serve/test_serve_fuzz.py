"""Fuzz a real `hlip serve` from its own OpenAPI document (schemathesis): every generated request, valid or
not, gets a 2xx or a 4xx, never a 5xx, and the server leaves no upload behind.

schemathesis' pytest plugin (``from_fixture``) does not run under this pytest, so each operation's
strategy is drawn with hypothesis directly: the same generated cases, positive and negative.
"""
from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

EXAMPLES = 200  # per operation and mode; about 20 s in all on 2 CPU cores


@schemathesis.serializer("application/zip")
def _zip_body(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def api_schema(server):
    spec = httpx.get(server.url + "/openapi.json", headers=server.headers(), timeout=30).raise_for_status().json()
    return schemathesis.openapi.from_dict(spec)


def test_the_schema_covers_every_route(api_schema):
    names = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert names == {"GET /v1/health", "GET /v1/info", "POST /v1/search", "POST /v1/zeroshot",
                     "POST /v1/relevance", "POST /v1/report", "POST /v1/embed", "GET /v1/studies/{study_uid}",
                     "POST /dicom-web/studies", "POST /dicom-web/studies/{study}"}


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx(api_schema, server, mode):
    seen: dict[str, set[int]] = {}
    unsatisfiable: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode == schemathesis.GenerationMode.NEGATIVE and operation.path in ("/v1/health", "/v1/info"):
            continue  # health and info take no input: nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(base_url=server.url, headers=server.headers(), timeout=120)
            assert response.status_code < 500, (case.method, case.formatted_path, case.query, response.text[:300])
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

        try:
            check()
        except Unsatisfiable:
            # nothing in this operation's schema can be made invalid (the STOW-RS body is any bytes)
            assert mode == schemathesis.GenerationMode.NEGATIVE and operation.path.startswith("/dicom-web/")
            unsatisfiable.append(operation.path)
        assert list(server.tmp_dir.iterdir()) == []
    routes = 10 - (2 if mode == schemathesis.GenerationMode.NEGATIVE else 0) - len(unsatisfiable)
    assert len(seen) == routes, seen
    if mode == schemathesis.GenerationMode.NEGATIVE:
        assert all(any(400 <= c < 500 for c in codes) for codes in seen.values()), seen
    else:
        assert 200 in seen["POST /v1/search"] and seen["GET /v1/health"] == {200}, seen
    print(mode.value, {k: sorted(v) for k, v in seen.items()})
