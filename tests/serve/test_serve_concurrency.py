"""Concurrency of a real `hlip serve`: studies that queue share a forward (micro-batching) and still equal
the engine's answers; a full queue answers 429 with Retry-After; search stays fast during relevance."""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest


@pytest.fixture(scope="module")
def small_queue(server_factory):
    # also: a --pacs node that cannot be used (see test_pacs_that_is_not_configured_is_a_clear_4xx)
    return server_factory("--max-queue", "1", "--workers", "1", "--pacs", "no-such-node", name="queue")


def _embedding(local, folder):
    from hlip_engine.io import load_study
    from hlip_engine.search import encode_prepared

    return encode_prepared(local["model"], [local["model"].prepare(load_study(folder)).tensor])[0]


def test_concurrent_studies_are_micro_batched_and_equal_alone(server, library, local):
    records = library["records"]
    jobs = [records[i % len(records)] for i in range(8)]

    def ask(rec):
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=300) as http:
            return http.post("/v1/embed", json={"study_uid": rec["uid"]})

    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        before = http.get("/v1/info").json()["server"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, jobs))
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        after = http.get("/v1/info").json()["server"]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    # 8 studies went through fewer forwards than 8: several studies per forward while they queued
    assert after["batches"] - before["batches"] < 8 and after["largest_batch"] > 1, (before, after)
    alone = {rec["uid"]: _embedding(local, rec["path"]) for rec in records}
    for rec, r in zip(jobs, answers):
        np.testing.assert_allclose(np.asarray(r.json()["embedding"]), alone[rec["uid"]], atol=1e-5)


def test_a_full_queue_answers_429_with_retry_after(small_queue, library):
    from hlip_engine.remote import EngineError, RemoteEngine

    uid = library["records"][0]["uid"]

    def ask(_i):
        with httpx.Client(base_url=small_queue.url, headers=small_queue.headers(), timeout=300) as http:
            return http.post("/v1/relevance?prompt=glioma", json={"study_uid": uid})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    busy = next(r for r in answers if r.status_code == 429)
    assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]
    # the client turns it into one error with the reason and the wait
    client = RemoteEngine(small_queue.url, small_queue.token)
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=small_queue.url, headers=small_queue.headers(),
                                                      timeout=60) as http:
        running = pool.submit(client.relevance, None, "glioma", study_uid=uid)
        deadline = time.monotonic() + 30
        while http.get("/v1/info").json()["server"]["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        error = None
        try:
            client.embed(study_uid=uid)
        except EngineError as e:
            error = e
        running.result()
    assert error is not None and error.status == 429 and error.kind == "busy" and error.retry_after >= 1
    assert "busy" in error.reason and "retry in" in error.reason
    with httpx.Client(base_url=small_queue.url, headers=small_queue.headers(), timeout=60) as http:
        assert http.get("/v1/info").json()["server"]["answered_429"] >= 2


def test_search_stays_fast_while_a_relevance_job_runs(server, library):
    uid = library["records"][1]["uid"]
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        quiet = []
        for i in range(5):
            t0 = time.perf_counter()
            assert http.post("/v1/search", json={"text": f"mass number {i}", "k": 5}).status_code == 200
            quiet.append(time.perf_counter() - t0)
    with ThreadPoolExecutor(4) as pool:
        def explain(prompt):
            with httpx.Client(base_url=server.url, headers=server.headers(), timeout=300) as h:
                t0 = time.perf_counter()
                r = h.post("/v1/relevance", params={"prompt": prompt, "method": "rollout"}, json={"study_uid": uid})
                return r.status_code, time.perf_counter() - t0, time.perf_counter()

        # relevance runs one job at a time on the model thread: a dozen queued jobs are seconds of work
        prompts = [f"{p} {i}" for i in range(4) for p in ("glioma", "infarct", "atrophy")]
        jobs = [pool.submit(explain, p) for p in prompts]
        time.sleep(0.3)
        busy, finished = [], []
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
            for i in range(10):
                t0 = time.perf_counter()
                assert http.post("/v1/search", json={"text": f"lesion {i}", "k": 5}).status_code == 200
                busy.append(time.perf_counter() - t0)
                finished.append(time.perf_counter())
        results = [j.result() for j in jobs]
    assert all(code == 200 for code, _s, _t in results)
    last_relevance_done = max(t for _c, _s, t in results)
    # the searches answered while relevance still ran (not queued behind it), and in well under a second
    assert finished[-1] < last_relevance_done, (finished[-1], last_relevance_done)
    assert statistics.median(busy) < 0.5, (quiet, busy)


def test_concurrent_text_searches_share_a_forward_and_equal_the_engine(server, local):
    from hlip_engine import search as retrieval

    texts = [f"{side} {finding}" for side in ("left", "right") for finding in ("glioma", "infarct", "atrophy",
                                                                               "haemorrhage")]

    def ask(text):
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
            return http.post("/v1/search", json={"text": text, "k": 4}).json()["hits"]

    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        before = http.get("/v1/info").json()["server"]["text_batches"]
    for _round in range(3):  # 8 at once, three times: some of them queue together
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, texts))
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        after = http.get("/v1/info").json()["server"]
    assert after["text_batches"] > before and after["largest_text_batch"] > 1, after
    for text, hits in zip(texts, answers):
        want = retrieval.search(local["index"], retrieval.text_vector(local["model"], text), 4)
        assert [h["study_uid"] for h in hits] == [h.meta["study_uid"] for h in want]
        np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in want], atol=1e-4)


def test_pacs_that_is_not_configured_is_a_clear_4xx(small_queue, library):
    with httpx.Client(base_url=small_queue.url, headers=small_queue.headers(), timeout=60) as http:
        pacs = http.get("/v1/info").json()["server"]["pacs"]
        assert pacs["node"] == "no-such-node" and pacs["configured"] is False and "no-such-node" in pacs["problem"]
        r = http.post("/v1/embed", json={"study_uid": "1.2.826.0.1.999.1"})
        assert r.status_code == 400 and "PACS is not configured" in r.json()["detail"], r.text
        # studies of the index are still served
        assert http.post("/v1/embed", json={"study_uid": library["records"][0]["uid"]}).status_code == 200
    assert "is not usable" in small_queue.log.read_text()
