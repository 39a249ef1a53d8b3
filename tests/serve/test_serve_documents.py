"""One document per question: what `hlip search --json` / `hlip zeroshot --json` print, what a real `hlip serve`
answers, and what the engine's document functions (which the napari plugin calls) return are the same
document, "more like this" included, on the demo model and an index of phantom studies."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest


def zipped(folder) -> bytes:
    """A study folder's files as a zip, as the client uploads it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=180) as client:
        yield client


def _cli(capsys, *argv) -> dict:
    from hlip_engine.cli import main as hlip

    assert hlip(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _same(got: dict, want: dict, atol: float = 0.0) -> None:
    """Same document: same keys and values, the hits' scores within ``atol`` (0: identical)."""
    assert set(got) == set(want)
    assert {k: v for k, v in got.items() if k != "hits"} == {k: v for k, v in want.items() if k != "hits"}
    assert [h["study_uid"] for h in got["hits"]] == [h["study_uid"] for h in want["hits"]]
    np.testing.assert_allclose([h["score"] for h in got["hits"]], [h["score"] for h in want["hits"]], atol=atol)
    strip = [{k: v for k, v in h.items() if k != "score"} for h in got["hits"]]
    assert strip == [{k: v for k, v in h.items() if k != "score"} for h in want["hits"]]


def test_more_like_a_study_of_the_index_is_one_document_everywhere(http, library, local, capsys):
    from hlip_engine.io import load_study
    from hlip_engine.search import search_document

    index = str(library["index"])
    for rec, k, modality in ((library["records"][0], 10, None), (library["records"][3], 3, "MR")):
        filters = ["--modality", modality] if modality else []
        cli = _cli(capsys, "search", index, "--like", rec["path"], "-k", str(k), "--json", *filters)
        assert cli["query"].startswith(f"studies like {rec['path']}") and cli["size"] == len(library["records"])
        assert rec["uid"] not in [h["study_uid"] for h in cli["hits"]] and cli["hits"]
        assert _cli(capsys, "search", index, "--like", rec["uid"], "-k", str(k), "--json", *filters) == cli
        by_uid = http.post("/v1/search", json={"study_uid": rec["uid"], "k": k, "modality": modality}).json()
        params = {"k": k, **({"modality": modality} if modality else {})}
        upload = http.post("/v1/search", params=params, content=zipped(rec["path"]),
                           headers={"Content-Type": "application/zip"}).json()
        engine = search_document(local["index"], local["model"], like=load_study(rec["path"]), k=k,
                                 filters={"modality": modality}, index_name=index)  # the plugin's call
        for doc in (by_uid, upload, engine):
            assert doc == cli  # the stored vector everywhere: the very same hits, to the last digit


def test_more_like_a_study_outside_the_index_and_free_text(http, library, local, capsys, tmp_path):
    from hlip_engine.demo import make_studies
    from hlip_engine.io import load_study
    from hlip_engine.search import search_document

    index = str(library["index"])
    (other,) = make_studies(tmp_path / "other", 1, seed=77)  # a study the index does not hold: encoded
    cli = _cli(capsys, "search", index, "--like", other["path"], "-k", "4", "--json")
    assert cli["query"] == f"studies like {other['uid']}" and len(cli["hits"]) == 4
    upload = http.post("/v1/search", params={"k": 4}, content=zipped(other["path"]),
                       headers={"Content-Type": "application/zip"}).json()
    engine = search_document(local["index"], local["model"], like=load_study(other["path"]), k=4,
                             index_name=index)
    _same(upload, cli, atol=1e-5)
    _same(engine, cli, atol=1e-5)

    cli = _cli(capsys, "search", index, "haemorrhage in the left frontal lobe", "-k", "5", "--json")
    served = http.post("/v1/search", json={"text": "haemorrhage in the left frontal lobe", "k": 5}).json()
    engine = search_document(local["index"], local["model"], text="haemorrhage in the left frontal lobe", k=5,
                             index_name=index)
    assert served == cli == engine


def test_zeroshot_default_set_is_one_document_everywhere(http, server, library, local, demo_checkpoint, capsys):
    import torch

    from hlip_engine.io import load_study
    from hlip_engine.remote import RemoteEngine
    from hlip_engine.search import encode_prepared
    from hlip_engine.zeroshot import zeroshot_document

    rec = library["records"][2]
    cli = _cli(capsys, "zeroshot", rec["path"], "--model", str(demo_checkpoint), "--json", "--device", "cpu")
    assert cli["prompt_set"] == "hlip-demo-5" and cli["default_because"] == "the model's own prompt set"
    assert cli["study"] == rec["uid"] and abs(sum(cli["probabilities"].values()) - 1) < 1e-5
    by_uid = http.post("/v1/zeroshot", json={"study_uid": rec["uid"]}).json()
    upload = http.post("/v1/zeroshot", content=zipped(rec["path"]), headers={"Content-Type": "application/zip"}).json()
    study = load_study(rec["path"])
    model = local["model"]
    with torch.inference_mode():
        embedding = encode_prepared(model, [model.prepare(study).tensor])[0]
    engine = zeroshot_document(model, study, embedding)
    client = RemoteEngine(server.url, server.token).zeroshot(study_uid=rec["uid"])  # no prompts sent
    for doc in (by_uid, upload, engine, client):
        assert {k: v for k, v in doc.items() if k != "probabilities"} == \
            {k: v for k, v in cli.items() if k != "probabilities"}
        assert list(doc["probabilities"]) == list(cli["probabilities"])
        np.testing.assert_allclose(list(doc["probabilities"].values()), list(cli["probabilities"].values()),
                                   atol=1e-5)
    named = http.post("/v1/zeroshot", params={"prompt_set": "pub-brain-5"}, json={"study_uid": rec["uid"]}).json()
    assert named["prompt_set"] == "pub-brain-5" and "default_because" not in named
