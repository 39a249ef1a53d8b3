"""hlip_engine.search: the one retrieval API (text_vector, study_vector, search -> list[Hit]) on a tiny real
model and a real FAISS index whose recorded recipe is not the model's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hlip_engine import search as retrieval
from hlip_engine.index import IndexBuild, IndexFormatError, ModelMismatchError, StudyIndex
from hlip_engine.model.checkpoint import model_fingerprint
from hlip_engine.preprocessing import model_recipe, preprocess
from hlip_engine.study import Scan, Study


def _ct_study(seed: int = 0, uid: str = "1.2.3") -> Study:
    rng = np.random.default_rng(seed)
    vol = rng.normal(40, 30, (10, 28, 28)).astype(np.float32)
    vol[3:7, 8:20, 8:20] += 900.0
    affine = np.diag([0.8, 0.8, 4.0, 1.0])
    scan = Scan(vol, affine, modality="CT", description="HEAD AX")
    return Study(uid=uid, scans=[scan], description="CT HEAD", date="20240102", modality="CT")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hlip_engine.model import create_model, load_model

    root = tmp_path_factory.mktemp("search_api")
    torch.manual_seed(0)
    ckpt = create_model("hlip_tiny").save(root / "tiny.safetensors")
    model = load_model(ckpt, device="cpu")
    recipe, options = model_recipe(model.config["preprocess"], "head-ct")  # as `--recipe head-ct` records
    study = _ct_study()
    with torch.inference_mode():
        twin = model.encode_image(torch.as_tensor(preprocess(study, recipe, **options).tensor)[None]).numpy()
    rng = np.random.default_rng(1)
    vectors = np.concatenate([twin, rng.normal(size=(19, model.embed_dim))]).astype(np.float32)
    meta = [dict(key=f"k{i}", path=f"/a/{i}", study_uid=f"9.{i}", date=f"20{10 + i:02d}0101",
                 modality="MR" if i % 2 else "CT", description=f"study {i}", n_scans=1) for i in range(20)]
    index = IndexBuild.create(root / "ix", model.embed_dim, ckpt.name, model_hash=model_fingerprint(ckpt),
                              recipe=recipe)
    index.add(vectors, meta)
    index.commit(extra_info={"checkpoint": str(ckpt), "preprocess": {"recipe": recipe, **options}})
    return {"root": root, "ckpt": ckpt, "model": model, "study": study}


def test_study_vector_uses_the_index_recipe(setup):
    model, study = setup["model"], setup["study"]
    index = retrieval.open_index(setup["root"] / "ix", model)
    assert retrieval.index_recipe(index, model)[0] == "head-ct" != model.config["preprocess"]["recipe"]
    hits = retrieval.search(index, retrieval.study_vector(index, model, study), k=3)
    assert [type(h) for h in hits] == [retrieval.Hit] * 3
    assert hits[0].row == 0 and hits[0].meta["key"] == "k0" and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert hits[0].as_dict()["score"] == round(hits[0].score, 4) and hits[0].as_dict()["path"] == "/a/0"
    with pytest.raises(ValueError, match="brain-mri"):  # the model's own recipe refuses a CT study
        model.encode_study(study)


def test_text_vector_filters_and_exclusion(setup):
    model = setup["model"]
    index = retrieval.open_index(setup["root"] / "ix", model)
    vec = retrieval.text_vector(model, "  acute infarct ")
    assert vec.shape == (1, model.embed_dim) and vec.dtype == np.float32
    with torch.inference_mode():
        want = model.encode_query(["acute infarct"]).numpy()
    assert np.allclose(vec, want, atol=1e-6)
    assert not np.allclose(retrieval.text_vector(model, "acute infarct", centre=False), want, atol=1e-3)
    hits = retrieval.search(index, vec, k=20, filters={"modality": "MR", "date_from": "2015-01-01"}, exclude=[1])
    assert hits and all(h.meta["modality"] == "MR" and h.meta["date"] >= "20150101" for h in hits)
    assert 1 not in [h.row for h in hits] and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(retrieval.search(index, vec, k=50)) == 20
    with pytest.raises(ValueError, match="unknown search filter"):
        retrieval.search(index, vec, k=3, filters={"sex": "F"})
    with pytest.raises(ValueError, match="type what to look for"):
        retrieval.text_vector(model, "   ")
    assert retrieval.stored_row(index, "/a/3") == 3 and retrieval.stored_row(index, "9.4") == 4
    assert retrieval.stored_row(index, setup["study"]) is None


def test_other_weights_are_refused(setup):
    from hlip_engine.model import create_model, load_model

    torch.manual_seed(2)
    other = load_model(create_model("hlip_tiny").save(setup["root"] / "other" / "tiny.safetensors"), device="cpu")
    with pytest.raises(ModelMismatchError, match="model weights differ"):
        retrieval.open_index(setup["root"] / "ix", other)
    index = StudyIndex.open(setup["root"] / "ix")
    with pytest.raises(IndexFormatError, match="not comparable"):
        retrieval.study_vector(index, other, setup["study"])


def test_search_document_more_like_this_is_one_rule(setup):
    """"More like this": a study of the index (by path, UID, or a Study with that UID) is searched with its
    stored vector and never returned; another study is encoded with the index's recipe."""
    model = setup["model"]
    index = retrieval.open_index(setup["root"] / "ix", model)
    stored = index.vectors([3])
    by_path = retrieval.search_document(index, like="/a/3", k=5)  # no model needed: nothing to encode
    assert set(by_path) == {"query", "index", "size", "hits"} and by_path["size"] == 20
    assert by_path["query"] == "studies like /a/3 (study 3)" and by_path["index"] == str(setup["root"] / "ix")
    assert by_path["hits"] == [h.as_dict() for h in retrieval.search(index, stored, 5, exclude=[3])]
    assert retrieval.search_document(index, like="9.3", k=5) == by_path
    twin = _ct_study(uid="9.3")  # another copy of row 3's study: its stored vector, not its pixels
    assert retrieval.search_document(index, model, like=twin, k=5) == by_path
    like = retrieval.like_query(index, twin)
    assert like.exclude == (3,) and np.array_equal(like.vector, stored)

    fresh = setup["study"]  # not in the index (UID 1.2.3): encoded, nothing excluded
    assert retrieval.like_query(index, fresh).vector is None
    doc = retrieval.search_document(index, model, like=fresh, k=3, index_name="lib")
    assert doc["query"] == "studies like 1.2.3" and doc["index"] == "lib" and doc["hits"][0]["key"] == "k0"
    with pytest.raises(ValueError, match="needs the index's model"):
        retrieval.search_document(index, like=fresh)

    text = retrieval.search_document(index, model, text=" acute infarct ", k=4, filters={"modality": "CT"})
    want = retrieval.search(index, retrieval.text_vector(model, "acute infarct"), 4, {"modality": "CT"})
    assert text["query"] == "'acute infarct'" and text["hits"] == [h.as_dict() for h in want]
    with pytest.raises(ValueError, match="not both"):
        retrieval.search_document(index, model, text="x", like="/a/3")
