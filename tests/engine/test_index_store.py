"""StudyIndex: exact and approximate search against brute force, filters, metadata, identifiers."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from hlip_engine.index import IndexBuild, IndexFormatError, StudyIndex
from hlip_engine.index.faiss_index import plan_for
from hlip_engine.study import PatientInfo


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around the same ``clusters`` centres for any ``seed`` (library and queries alike)."""
    centres = np.random.default_rng(clusters * 1000 + dim).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, start: int = 0) -> list[dict]:
    return [{"path": f"/lib/study{i}", "study_uid": f"1.2.3.{i}", "date": f"2023-{1 + i % 12:02d}-15",
             "modality": "MR" if i % 3 else "CT", "description": f"study {i}", "n_scans": 1 + i % 5}
            for i in range(start, start + n)]


def brute_force(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Ranking over the float16-rounded vectors the index stores."""
    x = x.astype(np.float16).astype(np.float32)
    s = q @ x.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def test_flat_search_is_exact_and_metadata_follows_ids(tmp_path):
    x = clustered(300, 32, 10, seed=0)
    index = IndexBuild.create(tmp_path / "ix", 32, "tiny-model", recipe="brain-mri")
    ids = np.concatenate([index.add(x[:100], metas(100)), index.add(x[100:], metas(200, 100))])
    assert list(ids) == list(range(300)) and len(index) == 300
    info = index.commit().info
    assert info["index"]["type"] == "flat" and info["count"] == 300

    reader = StudyIndex.open(tmp_path / "ix")
    assert len(reader) == 300
    q = clustered(7, 32, 10, seed=1)
    scores, found = reader.search(q, k=10)
    want_s, want_i = brute_force(x, q / np.linalg.norm(q, axis=1, keepdims=True), 10)
    assert found.shape == (7, 10) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    assert (found == want_i).mean() > 0.98  # ties between float16-equal rows may swap
    hits = reader.metadata(found[0])
    assert [h["id"] for h in hits] == list(found[0])
    assert hits[0]["path"] == f"/lib/study{found[0][0]}"
    assert hits[0]["recipe"] == "brain-mri" and hits[0]["date"].startswith("2023")
    # un-normalised query and a single vector give the same answer
    s2, i2 = reader.search(3.0 * q[0], k=10)
    assert list(i2[0]) == list(found[0])
    # more results asked than studies: padded with -1 / -inf, metadata None
    s3, i3 = reader.search(q[:1], k=305)
    assert (i3[0, :300] >= 0).all() and (i3[0, 300:] == -1).all() and np.isneginf(s3[0, 300:]).all()
    assert reader.metadata([-1, 5])[0] is None
    # stored vectors come back at float16 precision
    np.testing.assert_allclose(reader.vectors([3, 4]), x[3:5], atol=1e-3)
    assert reader.find(path="/lib/study42") == 42 and reader.find("nope") is None
    # a 'more like this' search never returns the study itself
    _, i4 = reader.search(x[42], k=5, exclude=[42])
    assert 42 not in i4[0] and (i4[0] >= 0).all()


def test_ivf_index_reaches_recall_on_clustered_vectors(tmp_path):
    n, dim = 6000, 48
    x = clustered(n, dim, 60, seed=2)
    index = IndexBuild.create(tmp_path / "ix", dim, "m")
    index.add(x, metas(n))
    info = index.commit(index_type="ivf").info
    plan = info["index"]
    assert plan["type"] == "ivf_sq8" and 16 <= plan["nlist"] <= n // 32
    assert 1 <= plan["nprobe"] <= plan["nlist"] and plan["tuned_recall_at_10"] >= 0.97

    reader = StudyIndex.open(tmp_path / "ix")
    q = clustered(100, dim, 60, seed=3)
    _, found = reader.search(q, k=10)
    _, truth = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.95


def test_index_type_rule_by_library_size():
    assert plan_for(20_000) == {"type": "flat"}
    assert plan_for(20_001)["type"] == "ivf_sq8"
    assert plan_for(100_000)["nlist"] == 256 and plan_for(1_000_000)["nlist"] == 1024
    assert plan_for(10_000_000)["nlist"] == 4096
    with pytest.raises(ValueError, match="auto, flat or ivf"):
        plan_for(10, "hnsw")


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_filters_by_modality_and_date(tmp_path, index_type):
    n, dim = 3000, 24
    x = clustered(n, dim, 30, seed=4)
    m = metas(n)
    index = IndexBuild.create(tmp_path / "ix", dim, "m")
    index.add(x, m)
    index.commit(index_type=index_type)
    reader = StudyIndex.open(tmp_path / "ix")
    q = clustered(5, dim, 30, seed=5)
    modality = np.array([d["modality"] for d in m])
    month = np.array([int(d["date"][5:7]) for d in m])

    # broad filter (2/3 of the library): FAISS with an ID selector
    _, found = reader.search(q, 10, modality="mr")
    allowed = modality == "MR"
    assert allowed[found].all()
    _, truth = brute_force(x, q, 10, allowed)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) >= 0.95

    # narrow filter (CT in Mar-Apr: ~170 studies): scored exactly from the stored rows
    _, found = reader.search(q, 10, modality=["CT"], date_from="20230301", date_to="2023-04-30")
    allowed = (modality == "CT") & (month >= 3) & (month <= 4)
    assert allowed[found].all()
    _, truth = brute_force(x, q, 10, allowed)
    assert (found == truth).mean() > 0.98
    for hit in reader.metadata(found[0]):
        assert hit["modality"] == "CT" and "20230301" <= hit["date"] <= "20230430"

    # nothing matches: all padding
    scores, found = reader.search(q, 10, modality="PT")
    assert (found == -1).all() and np.isneginf(scores).all()
    with pytest.raises(ValueError, match="not a date"):
        reader.search(q, 10, date_from="last week")


def test_patient_identifiers_are_dropped_unless_kept(tmp_path):
    x = clustered(4, 16, 2, seed=6)
    rows = [{**d, "patient": PatientInfo(name="DOE^JANE", id="MRN12345"), "patient_name": "DOE^JANE",
             "PatientID": "MRN12345", "protocol": "stroke"} for d in metas(4)]
    for keep in (False, True):
        folder = tmp_path / f"keep{keep}"
        index = IndexBuild.create(folder, 16, "m", keep_identifiers=keep)
        index.add(x, rows)
        index.commit()
        stored = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
        assert (b"DOE^JANE" in stored) is keep and (b"MRN12345" in stored) is keep
        hit = StudyIndex.open(folder).metadata([0])[0]
        assert hit["protocol"] == "stroke"
        assert ("patient_name" in hit) is keep


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    index = IndexBuild.create(tmp_path / "ix", 8, "m")
    with pytest.raises(ValueError, match=r"shaped \[n, 8\]"):
        index.add(np.ones((2, 9), np.float32), metas(2))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 8), np.nan, np.float32), metas(1))
    with pytest.raises(ValueError, match="2 embeddings but 1"):
        index.add(np.ones((2, 8), np.float32), metas(1))
    with pytest.raises(ValueError, match="nothing to publish"):
        index.commit()
    index.add(np.eye(8, dtype=np.float32)[:2], metas(2))
    with pytest.raises(ValueError, match="already in this index"):
        index.add(np.eye(8, dtype=np.float32)[2:3], metas(1))
    assert not hasattr(index, "search") and not hasattr(index, "metadata")  # a build never reads
    build, index = index, index.commit()
    assert not hasattr(index, "add") and len(build) == 2  # the published index never writes
    with pytest.raises(ValueError, match=r"shaped \[n, 8\]"):
        index.search(np.ones(5), 3)
    with pytest.raises(ValueError, match="all-zero"):
        index.search(np.zeros(8), 3)
    with pytest.raises(ValueError, match="no study with row id 7"):
        index.metadata([7])
    with pytest.raises(FileNotFoundError, match="no study index"):
        StudyIndex.open(tmp_path / "missing")
    with pytest.raises(IndexFormatError, match="not a study index"):
        StudyIndex.open(tmp_path)
    # the metadata table is plain SQLite any tool can read
    version = index.version
    with sqlite3.connect(version / "metadata.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 2
