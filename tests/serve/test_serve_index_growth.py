"""A running `hlip serve` sees studies added to its index after it started (`hlip index add`, `hlip listen`)."""
from __future__ import annotations

import httpx
from conftest import DEMO, indexed_library, start_server, stop_server

from hlip_engine.cli import main as hlip
from hlip_engine.demo import make_studies


def test_studies_added_while_the_server_runs_are_searchable(tmp_path):
    lib = indexed_library(tmp_path / "grow", 3, seed=41)
    srv = start_server(tmp_path / "srv", lib["index"], name="grow")
    try:
        more = make_studies(tmp_path / "more", 2, seed=42)
        with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=120) as http:
            assert http.post("/v1/search", json={"study_uid": more[0]["uid"], "k": 3}).status_code == 404
            assert hlip(["index", "add", str(tmp_path / "more"), "--model", str(DEMO), "--index",
                         str(lib["index"]), "--device", "cpu"]) == 0
            found = http.post("/v1/search", json={"study_uid": more[0]["uid"], "k": 10})
            assert found.status_code == 200, found.text
            assert more[1]["uid"] in {h["study_uid"] for h in found.json()["hits"]}
            assert http.post("/v1/search", json={"text": "normal brain", "k": 10}).json()["size"] == 5
    finally:
        stop_server(srv.proc)
