"""Atomic publishing, kill -9 inside commit, corrupted / half-copied / foreign indexes, resumable build store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hlip_engine.index import IndexBuild, IndexFormatError, StudyIndex

REPO = Path(__file__).resolve().parents[2]


def vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def metas(n: int, start: int = 0) -> list[dict]:
    return [{"key": f"k{i}", "path": f"/lib/s{i}", "modality": "MR", "date": "20240101"} for i in range(start, start + n)]


def built(folder: Path, n: int = 50, model: str = "model-a") -> StudyIndex:
    with IndexBuild.create(folder, 16, model, model_hash=model * 4) as build:
        build.add(vectors(n), metas(n))
        return build.commit()  # the published index, read-only; the build lock is released


def test_readers_keep_their_version_while_a_new_one_is_published(tmp_path):
    ix = tmp_path / "ix"
    built(ix, 50)
    old = StudyIndex.open(ix)
    writer = IndexBuild.create(ix, 16, "model-a", model_hash="model-a" * 4, resume=True)
    assert len(writer) == 50  # the build store kept the finished studies
    writer.add(vectors(10, seed=1), metas(10, 50))
    writer.commit()
    new = StudyIndex.open(ix)
    assert (len(old), len(new)) == (50, 60) and old.version != new.version
    assert old.search(vectors(1), 3)[1].shape == (1, 3)  # the old reader still works
    writer.add(vectors(5, seed=2), metas(5, 60))
    newest = writer.commit()
    assert isinstance(newest, StudyIndex) and len(newest) == 65 and newest.search(vectors(1), 3)[1].shape == (1, 3)
    assert sorted(p.name for p in (ix / "versions").iterdir()) == sorted([new.version.name, newest.version.name])


def test_kill_9_inside_commit_leaves_the_published_index_untouched(tmp_path):
    ix = tmp_path / "ix"
    built(ix, 30)
    before = StudyIndex.open(ix)
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from hlip_engine.index import IndexBuild
        ix = IndexBuild.create({str(ix)!r}, 16, "model-a", model_hash="model-a" * 4, resume=True)
        ix.add(np.random.default_rng(5).standard_normal((20, 16)).astype("f4"),
               [{{"key": f"new{{i}}", "path": f"/lib/new{{i}}"}} for i in range(20)])
        def log(msg):
            if msg == "publishing":
                os.kill(os.getpid(), signal.SIGKILL)
        ix.commit(log=log)
    """)
    run = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr[-1000:]
    assert any(p.name.startswith(".tmp-") for p in (ix / "versions").iterdir())  # the killed half-version
    after = StudyIndex.open(ix, verify=True)
    assert after.version == before.version and len(after) == 30
    # the 20 studies added before the kill are durable: a resumed build publishes them, and cleans up
    writer = IndexBuild.create(ix, 16, "model-a", model_hash="model-a" * 4, resume=True)
    assert len(writer) == 50 and "new19" in writer.done_keys()
    writer.commit()
    assert len(StudyIndex.open(ix)) == 50
    assert not any(p.name.startswith(".tmp-") for p in (ix / "versions").iterdir())


def test_corrupted_or_half_copied_indexes_are_named(tmp_path):
    ix = tmp_path / "ix"
    version = built(ix).version
    faiss_file = version / "index.faiss"
    good = faiss_file.read_bytes()

    faiss_file.write_bytes(good[: len(good) // 2])  # half-copied
    with pytest.raises(IndexFormatError, match="index.faiss: corrupted or half-copied index"):
        StudyIndex.open(ix)
    faiss_file.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size, one byte changed
    with pytest.raises(IndexFormatError, match="checksum"):
        StudyIndex.open(ix, verify=True)
    faiss_file.write_bytes(good)
    assert len(StudyIndex.open(ix, verify=True)) == 50

    (version / "metadata.sqlite").rename(version / "gone")
    with pytest.raises(IndexFormatError, match="metadata.sqlite: corrupted or half-copied index: file is missing"):
        StudyIndex.open(ix)
    (version / "gone").rename(version / "metadata.sqlite")

    info = json.loads((version / "info.json").read_text())
    (version / "info.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99"):
        StudyIndex.open(ix)
    (version / "info.json").write_text("{ not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        StudyIndex.open(ix)
    (version / "info.json").write_text(json.dumps(info))

    (ix / "CURRENT").write_text("v-that-was-never-copied\n")
    with pytest.raises(IndexFormatError, match="names version 'v-that-was-never-copied', which is missing"):
        StudyIndex.open(ix)


def test_another_model_is_refused_unless_rebuilding(tmp_path):
    ix = tmp_path / "ix"
    built(ix)
    with pytest.raises(IndexFormatError, match="model 'model-a'.*Pass --rebuild"):
        IndexBuild.create(ix, 16, "model-b", model_hash="model-b" * 4, resume=True)
    with pytest.raises(IndexFormatError, match="embedding size 16 vs 32"):
        IndexBuild.create(ix, 32, "model-a", model_hash="model-a" * 4, resume=True)
    with pytest.raises(ValueError, match="already holds 50 studies; pass --resume"):
        IndexBuild.create(ix, 16, "model-a", model_hash="model-a" * 4)
    with pytest.raises(IndexFormatError, match="not model 'model-b'|model weights differ"):
        StudyIndex.open(ix, expect_model={"model_id": "model-b", "model_hash": "model-b" * 4})

    writer = IndexBuild.create(ix, 16, "model-b", model_hash="model-b" * 4, rebuild=True)
    assert len(writer) == 0
    assert StudyIndex.open(ix).identity["model_id"] == "model-a"  # still searchable until the new commit
    writer.add(vectors(7, seed=3), metas(7))
    writer.commit()
    reopened = StudyIndex.open(ix)
    assert reopened.identity["model_id"] == "model-b" and len(reopened) == 7


def test_build_store_survives_leftovers_and_refuses_a_second_writer(tmp_path):
    ix = tmp_path / "ix"
    writer = IndexBuild.create(ix, 16, "model-a")
    writer.add(vectors(5), metas(5))
    with pytest.raises(ValueError, match="another index build is writing"):
        IndexBuild.create(ix, 16, "model-a", resume=True)
    with pytest.raises(ValueError, match="another index build is writing"):
        IndexBuild.create(ix, 16, "model-a", rebuild=True)  # never deletes a running build's store
    assert len(writer) == 5
    writer.close()
    # what a kill between writing a chunk file and recording it leaves behind
    orphan = ix / "build" / "chunks" / "chunk-deadbeefdeadbeef.f16"
    orphan.write_bytes(b"\0" * 64)
    with pytest.raises(IndexFormatError, match="not finished yet"):
        StudyIndex.open(ix)
    writer = IndexBuild.create(ix, 16, "model-a", resume=True)
    assert not orphan.exists() and len(writer) == 5
    writer.add(vectors(3, seed=9), metas(3, 5))
    writer.commit()
    assert [m["key"] for m in StudyIndex.open(ix).metadata(np.arange(8))] == [f"k{i}" for i in range(8)]
