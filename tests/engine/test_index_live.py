"""LiveIndex: studies added one batch at a time are searchable at once, never twice, and a stale quantiser is
retrained in the background and swapped in while readers keep searching (real FAISS, real files)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from hlip_engine.index import StudyIndex, faiss_index
from hlip_engine.index import live as live_mod
from hlip_engine.index.files import ModelMismatchError
from hlip_engine.index.live import LiveIndex

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(start: int, n: int, **extra) -> list[dict]:
    return [{"key": f"uid:1.2.9.{i}", "study_uid": f"1.2.9.{i}", "path": f"/spool/{i}", "modality": "MR",
             "date": "20240101", **extra} for i in range(start, start + n)]


def open_live(path, **kw) -> LiveIndex:
    return LiveIndex.open(path, dim=DIM, model_id="m", model_hash="h" * 64, recipe="auto", **kw)


def top1(index: StudyIndex, vecs: np.ndarray) -> np.ndarray:
    return index.search(vecs, k=1)[1][:, 0]


def test_added_studies_are_searchable_at_once_and_never_twice(tmp_path):
    x = unit(30, 0)
    with open_live(tmp_path / "ix") as live:
        assert [a.outcome for a in live.add(x[:20], metas(0, 20))] == ["added"] * 20
        assert len(StudyIndex.open(tmp_path / "ix")) == 20
        early = StudyIndex.open(tmp_path / "ix")  # a reader opened before the next add
        live.add(x[20:25], metas(20, 5))
        assert len(early) == 20 and early.refresh() and len(early) == 25 and not early.refresh()
        assert list(top1(early, x[20:25])) == [20, 21, 22, 23, 24]
        fresh = StudyIndex.open(tmp_path / "ix")  # another reader, opened after the add returned
        assert len(fresh) == 25 and list(top1(fresh, x[20:25])) == [20, 21, 22, 23, 24]
        assert list(top1(live, x[20:25])) == [20, 21, 22, 23, 24]

        # the same study again, same content: nothing written, no new version
        version = live.current.version
        again = live.add(x[3:4], metas(3, 1))
        assert (again[0].outcome, again[0].row) == ("unchanged", 3) and live.current.version == version
        # the same StudyInstanceUID under another key (another folder): still the same study
        other = metas(4, 1)[0] | {"key": "/elsewhere#1.2.9.4", "path": "/elsewhere"}
        assert live.add(x[4:5], [other])[0].outcome == "unchanged"
        # changed content: replaced in place, same row, the new vector is what is found
        y = unit(1, 99)
        changed = live.add(y, [other])
        assert (changed[0].outcome, changed[0].row) == ("replaced", 4)
        fresh = StudyIndex.open(tmp_path / "ix")
        assert len(fresh) == 25 and top1(fresh, y)[0] == 4 and fresh.metadata([4])[0]["path"] == "/elsewhere"
        assert top1(fresh, x[4:5])[0] != 4 or fresh.search(x[4:5], 1)[0][0, 0] < 0.99
        # two entries of one new study in one call: one row, the last one's content
        out = live.add(np.stack([x[25], x[26]]), metas(25, 1) * 2)
        assert [a.outcome for a in out] == ["unchanged", "added"] and out[0].row == out[1].row == 25
        assert len(live) == 26 and top1(live, x[26:27])[0] == 25
        # a fingerprint decides over the embedding when both sides have one
        live.add(x[27:28], metas(27, 1, fingerprint="a"))
        assert live.add(unit(1, 5), metas(27, 1, fingerprint="a"))[0].outcome == "unchanged"
        assert live.add(x[27:28], metas(27, 1, fingerprint="b"))[0].outcome == "replaced"
        assert live.lookup(study_uid="1.2.9.27")["fingerprint"] == "b"
    # the build lock is released; the published index holds each study once
    final = StudyIndex.open(tmp_path / "ix", verify=True)
    uids = [m["study_uid"] for m in final.metadata(np.arange(len(final)))]
    assert len(uids) == len(set(uids)) == 27


def test_an_add_that_was_never_published_is_published_on_reopen(tmp_path):
    x = unit(12, 1)
    with open_live(tmp_path / "ix") as live:
        live.add(x[:10], metas(0, 10))
        live.build.store.add(x[10:12], metas(10, 2))  # durable, then the writer dies before publishing
    assert len(StudyIndex.open(tmp_path / "ix")) == 10
    with open_live(tmp_path / "ix") as live:
        assert len(live) == 12 and len(StudyIndex.open(tmp_path / "ix")) == 12
        assert live.add(x[11:12], metas(11, 1))[0].outcome == "unchanged"


def test_another_model_is_refused(tmp_path):
    with open_live(tmp_path / "ix") as live:
        live.add(unit(3, 0), metas(0, 3))
    with pytest.raises(ModelMismatchError):
        LiveIndex.open(tmp_path / "ix", dim=DIM, model_id="m", model_hash="g" * 64, recipe="auto")


def test_stale_quantiser_is_retrained_in_the_background_and_catches_up(tmp_path, monkeypatch):
    x = unit(700, 2)
    trained, release = threading.Event(), threading.Event()
    real_train = live_mod._train

    def train_then_hold(embeddings, plan):  # the real training; then hold until more studies have arrived
        index = real_train(embeddings, plan)
        trained.set()
        assert release.wait(60)
        return index

    monkeypatch.setattr(live_mod, "_train", train_then_hold)
    stop, seen, errors = threading.Event(), [], []

    def reader():  # opens the index over and over while it grows and is swapped
        while not stop.is_set():
            try:
                ix = StudyIndex.open(tmp_path / "ix")
                n = len(ix)
                assert top1(ix, x[n - 1:n])[0] == n - 1
                seen.append(n)
                ix.close()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return

    with open_live(tmp_path / "ix", index_type="ivf", growth=2.0) as live:
        live.add(x[:200], metas(0, 200))
        first = live.current.info
        assert first["index"]["type"] == "ivf_sq8" and first["trained_count"] == 200
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            for start in range(200, 400, 50):
                live.add(x[start:start + 50], metas(start, 50))
            assert trained.wait(60)  # retraining started at 400 studies (2x) and has trained on the snapshot
            live.add(x[400:450], metas(400, 50))  # arrive while the new index waits to be swapped in
            live.add(unit(1, 77), metas(5, 1))  # and one study of the snapshot changes
            assert live.current.info["trained_count"] == 200  # not swapped yet
        finally:
            release.set()
        try:
            assert live.wait_retrain(60) and live.retrains == 1 and not live.retrain_error
            info = live.current.info
            assert info["trained_count"] == 400 and info["count"] == 450 and info["index"]["nprobe"] >= 1
        finally:
            stop.set()
            t.join(30)
    assert not errors and seen and seen == sorted(seen)
    ix = StudyIndex.open(tmp_path / "ix", verify=True)
    expect = np.arange(450)
    expect[5] = -1
    found = top1(ix, x[:450])
    assert (found[expect >= 0] == expect[expect >= 0]).mean() > 0.97  # IVF: approximate, re-scored exactly
    assert top1(ix, unit(1, 77))[0] == 5


def test_an_exact_index_becomes_ivf_when_it_outgrows_flat(tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_index, "FLAT_MAX", 150)
    x = unit(200, 3)
    with open_live(tmp_path / "ix", background=False) as live:
        live.add(x[:100], metas(0, 100))
        assert live.current.info["index"]["type"] == "flat"
        live.add(x[100:200], metas(100, 100))
        assert live.current.info["index"]["type"] == "ivf_sq8" and live.retrains == 1
        assert (top1(live, x) == np.arange(200)).mean() > 0.97
