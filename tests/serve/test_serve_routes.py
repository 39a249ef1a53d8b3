"""Every route of a real `hlip serve` over HTTP: health, token, info, search (= the engine's answer), the
422s of the search body, and client-named paths that the server never reads."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

ROUTES = [("GET", "/v1/info"), ("GET", "/openapi.json"), ("POST", "/v1/search"), ("POST", "/v1/zeroshot"),
          ("POST", "/v1/relevance"), ("POST", "/v1/embed")]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=120) as client:
        yield client


def test_health_needs_no_token_and_everything_else_does(server):
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        r = anon.get("/v1/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        for method, route in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                            {"Authorization": server.token}, {"Authorization": f"Basic {server.token}"}):
                # a bad body too: the token is checked first, so a 401 never tells what else is wrong
                r = anon.request(method, route + "?k=0", headers=headers, content=b"{not json",
                                 params=None)
                assert r.status_code == 401, (method, route, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert "token" in r.json()["detail"]
        assert anon.get("/docs").status_code == 404  # no unauthenticated documentation pages
    log = server.log.read_text()
    assert server.token not in log and "wrong-token" not in log  # the token is never logged


def test_info_describes_model_and_index(http, library, local, demo_checkpoint):
    from hlip_engine.search import checkpoint_identity

    info = http.get("/v1/info").json()
    fingerprint = checkpoint_identity(demo_checkpoint)["model_hash"]
    assert info["model"]["name"] == "hlip_demo" and info["model"]["embedding_size"] == local["model"].embed_dim
    assert info["model"]["architecture"] == "hlip_demo" and info["model"]["fingerprint"] == fingerprint
    assert info["model"]["recipe"] == local["model"].config["preprocess"]
    # what the plugin's defaults come from: the model's own zero-shot prompt set and relevance method
    assert info["model"]["zeroshot"]["prompt_set"]["name"] == "hlip-demo-5"  # the demo model's own five
    assert info["model"]["relevance"] == {"method": "mirrored-guided-rollout"} == local["model"].config["relevance"]
    assert info["index"]["size"] == len(library["records"]) == len(local["index"])
    assert info["index"]["model_fingerprint"] == fingerprint
    assert "pub-brain-5" in info["prompt_sets"] and "last-block" in info["relevance_methods"]
    spec = http.get("/openapi.json").json()
    assert {"/v1/health", "/v1/info", "/v1/search", "/v1/zeroshot", "/v1/relevance", "/v1/embed"} <= set(spec["paths"])


def _local_search(local, text=None, uid=None, k=10, filters=None, plain=False):
    from hlip_engine import search as retrieval

    index, model = local["index"], local["model"]
    exclude = []
    if text is not None:
        vec = retrieval.text_vector(model, text, centre=not plain)
    else:
        row = index.find(study_uid=uid)
        vec, exclude = index.vectors([row]), [row]
    return [h.as_dict() for h in retrieval.search(index, vec, k, filters or {}, exclude=exclude)]


def _same_hits(got, want):
    assert [h["study_uid"] for h in got] == [h["study_uid"] for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)
    assert got == want  # the CLI's hit dicts, key for key


def test_search_by_text_and_by_study_equals_the_engine(http, library, local, capsys):
    from hlip_engine.cli import main as hlip

    for text, k, extra in (("glioma with surrounding oedema", 3, {}), ("normal brain", 10, {}),
                           ("acute haemorrhage", 4, {"modality": "CT"}), ("infarct", 5, {"plain": True}),
                           ("atrophy", 6, {"date_from": "2020-01-01", "date_to": "20301231"})):
        r = http.post("/v1/search", json={"text": text, "k": k, **extra})
        assert r.status_code == 200, r.text
        doc = r.json()
        filters = {key: v for key, v in extra.items() if key != "plain"}
        want = _local_search(local, text=text, k=k, filters=filters, plain=extra.get("plain", False))
        _same_hits(doc["hits"], want)
        assert doc["query"] == repr(text) and len(doc["hits"]) == min(k, len(want))
        if extra.get("modality"):
            assert doc["hits"] and all(h["modality"] == "CT" for h in doc["hits"])
    # the CLI's --json document: same keys, same hits
    assert hlip(["search", str(library["index"]), "normal brain", "-k", "4", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    served = http.post("/v1/search", json={"text": "normal brain", "k": 4}).json()
    assert set(served) == set(cli) and served["query"] == cli["query"]
    _same_hits(served["hits"], cli["hits"])

    uid = library["records"][0]["uid"]
    doc = http.post("/v1/search", json={"study_uid": uid, "k": 10}).json()
    _same_hits(doc["hits"], _local_search(local, uid=uid, k=10))
    assert uid not in [h["study_uid"] for h in doc["hits"]] and len(doc["hits"]) == len(library["records"]) - 1
    r = http.post("/v1/search", json={"study_uid": "1.2.3.4.5.6.7", "k": 3})
    assert r.status_code == 404 and "not in the index" in r.json()["detail"]


@pytest.mark.parametrize("body, status, words", [
    ({"text": "x", "k": 0}, 422, "k"),
    ({"text": "x", "k": 1001}, 422, "k"),
    ({"text": "x", "k": "ten"}, 422, "k"),
    ({"text": "", "k": 3}, 422, "text"),
    ({"text": "x" * 2001, "k": 3}, 422, "text"),
    ({"text": "   ", "k": 3}, 422, "type what to look for"),
    ({"text": 42, "k": 3}, 422, "text"),
    ({"k": 3}, 422, "either text or study_uid"),
    ({"text": "x", "study_uid": "1.2.3", "k": 3}, 422, "either text or study_uid"),
    ({"text": "x", "k": 3, "modality": 7}, 422, "modality"),
    ({"text": "x", "k": 3, "date_from": "not-a-date"}, 422, "date"),
    ({"text": "x", "k": 3, "path": "/etc/passwd"}, 422, "path"),
    ([1, 2, 3], 422, "input"),
])
def test_bad_search_bodies_are_422_with_one_line(http, body, status, words):
    r = http.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words.lower() in detail.lower(), detail


def test_malformed_json_and_wrong_content_types_are_4xx(http):
    for route in ("/v1/search", "/v1/zeroshot?prompt=a&prompt=b", "/v1/embed", "/v1/relevance?prompt=a"):
        r = http.post(route, content=b'{"text": "glioma", "k": ', headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "malformed JSON" in r.json()["detail"], (route, r.text)
        r = http.post(route, content=b"text=glioma", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415, (route, r.text)


def test_a_path_named_by_the_client_is_never_read(http, tmp_path):
    """The server reads uploads, indexed studies and its PACS only: every way of naming a path is a 4xx,
    and the file named is never opened (its access time does not move)."""
    import os

    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    os.utime(secret, (1_000_000_000, 1_000_000_000))
    bodies = [{"path": str(secret)}, {"study_uid": str(secret)}, {"study_uid": "../../etc/passwd"},
              {"study_uid": "1.2.3", "path": str(secret)}, {"study": str(secret)}]
    for route in ("/v1/zeroshot?prompt_set=pub-brain-5", "/v1/embed", "/v1/relevance?prompt=glioma"):
        for body in bodies:
            r = http.post(route, json=body)
            assert r.status_code in (404, 422), (route, body, r.text)
    for body in ({"study_uid": str(secret), "k": 3}, {"text": "x", "k": 3, "path": str(secret)}):
        assert http.post("/v1/search", json=body).status_code == 422
    assert os.stat(secret).st_atime == 1_000_000_000
