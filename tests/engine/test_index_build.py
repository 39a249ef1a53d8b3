"""`hlip index build` / `hlip search` end to end: real DICOM studies, a tiny real model, a real FAISS index,
kill -9 then --resume in a real subprocess, and two torchrun ranks (gloo, CPU)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from blob_scans import blob_scan

from hlip_engine.cli import main as hlip
from hlip_engine.index import IndexFormatError, StudyIndex
from hlip_engine.index.embed_pipeline import model_fingerprint
from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.study import PatientInfo

REPO = Path(__file__).resolve().parents[2]
UID = "1.2.826.0.1.3680043.8.498.77."


def write_library(root: Path, n_mr: int, with_ct: bool = True) -> list[Path]:
    """n_mr brain MR studies (2 series each) + one CT study that the brain-MRI recipe must skip."""
    folders = []
    for i in range(n_mr + int(with_ct)):
        modality = "CT" if i == n_mr else "MR"
        folder = root / f"study{i:02d}"
        for s in range(2):
            write_dicom_series(blob_scan(100 * i + s, modality, f"AX T{s + 1}"), folder / f"s{s}",
                               study_uid=f"{UID}{i + 1}", series_number=s + 1, study_description=f"BRAIN {i}",
                               study_date=f"2024{1 + i:02d}10", patient=PatientInfo(name="ROE^RICHARD", id=f"PX{i}77"))
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from hlip_engine.model import create_model

    root = tmp_path_factory.mktemp("index_build")
    torch.manual_seed(0)
    model = create_model("hlip_tiny")
    ckpt = model.save(root / "tiny.safetensors")
    return {"root": root, "ckpt": Path(ckpt), "model": model.eval(),
            "folders": write_library(root / "library", n_mr=4)}


def _embed(model, folder: Path) -> np.ndarray:
    with torch.inference_mode():
        return model.encode_study(load_study(folder)).numpy()


def test_build_search_and_refuse_another_model(tiny, tmp_path, capsys):
    lib, ckpt, model = tiny["root"] / "library", tiny["ckpt"], tiny["model"]
    ix = tmp_path / "lib.index"
    assert hlip(["index", "build", str(lib), "--model", str(ckpt), "--index", str(ix), "--workers", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "indexed 4, skipped 1" in out and "study04: " in out and "is CT" in out

    index = StudyIndex.open(ix)
    assert len(index) == 4 and index.info["skipped"] == 1
    assert index.identity["model_hash"] == model_fingerprint(ckpt) and index.identity["recipe"] == "brain-mri"
    # the builder's embedding of a study is the engine's (same loader, recipe and model)
    row = index.find(path=str(tiny["folders"][2]))
    np.testing.assert_allclose(index.vectors([row])[0], _embed(model, tiny["folders"][2]), atol=2e-3)
    meta = index.metadata([row])[0]
    assert meta["study_uid"] == f"{UID}3" and meta["modality"] == "MR" and meta["date"] == "20240310"
    assert meta["n_scans"] == 2 and meta["description"] == "BRAIN 2"
    stored = b"".join(p.read_bytes() for p in ix.rglob("*") if p.is_file())
    assert b"ROE^RICHARD" not in stored and b"PX277" not in stored

    # free-text search: the index's own model encodes the text; scores are cosine similarities to the
    # query centred on the typical queries of the model's domain, or (--plain) to the plain query
    all_vecs = index.vectors(np.arange(4))
    with torch.inference_mode():
        text = model.encode_text(["small bright lesion"]).numpy()[0]
        centred = model.encode_query(["small bright lesion"]).numpy()[0]
    for flags, query in (([], centred), (["--plain"], text)):
        assert hlip(["search", str(ix), "small bright lesion", "-k", "3", "--json", *flags]) == 0
        hits = json.loads(capsys.readouterr().out)["hits"]
        np.testing.assert_allclose([h["score"] for h in hits], np.sort(all_vecs @ query)[::-1][:3], atol=1e-3)
        assert [h["path"] for h in hits] == [index.metadata([i])[0]["path"] for i in np.argsort(-(all_vecs @ query))[:3]]
    # --like a study of the index: itself excluded; filters apply
    assert hlip(["search", str(ix), "--like", str(tiny["folders"][0]), "--json", "--date-from", "2024-02-01"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["path"] for h in hits] and str(tiny["folders"][0]) not in [h["path"] for h in hits]
    assert all(h["date"] >= "20240201" for h in hits)

    # an empty library, a query with no text, and an index built by another model: one clear line each
    (tmp_path / "empty").mkdir()
    assert hlip(["index", "build", str(tmp_path / "empty"), "--model", str(ckpt), "--index",
                 str(tmp_path / "e.index"), "--no-progress"]) == 2
    assert "no studies found" in capsys.readouterr().err
    assert hlip(["search", str(ix), "   "]) == 2
    assert "free text" in capsys.readouterr().err
    from hlip_engine.model import create_model

    torch.manual_seed(1)
    other = create_model("hlip_tiny").save(tmp_path / "other.safetensors")  # same shape, other weights
    assert hlip(["index", "build", str(lib), "--model", str(other), "--index", str(ix), "--resume",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--rebuild" in err and "tiny.safetensors" in err
    with pytest.raises(ValueError, match="not the model this index was built with"):
        from types import SimpleNamespace

        from hlip_engine.commands.search import _model_of
        _model_of(index, SimpleNamespace(model=str(other), index_dir=str(ix), device=None))
    version = index.version
    assert StudyIndex.open(ix).version == version  # the refused build touched nothing


def test_kill_9_then_resume_redoes_nothing(tiny, tmp_path):
    lib = tmp_path / "library"
    shutil.copytree(tiny["root"] / "library", lib)  # 4 MR studies + 1 CT study the recipe skips
    folders = [lib / f.name for f in tiny["folders"][:4]]
    ix = tmp_path / "ix"
    cmd = [sys.executable, "-m", "hlip_engine.index", "build", str(lib), "--model", str(tiny["ckpt"]),
           "--index", str(ix), "--workers", "0", "--batch-size", "1", "--flush-every", "1", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    store = ix / "build" / "build.sqlite"

    def build_then_kill() -> int | None:
        """Start the build, kill -9 it once 2 studies are stored; None when it finished first (a tiny model
        can store the last studies and publish between two looks at the store): then the try is redone."""
        shutil.rmtree(ix, ignore_errors=True)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        done = 0
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as con:
                    try:
                        done = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
                    except sqlite3.OperationalError:  # tables not created yet
                        done = 0
                if done >= 2:
                    break
            time.sleep(0.005)
        assert proc.poll() is None or (ix / "CURRENT").exists(), \
            f"build ended without publishing: {proc.stderr.read().decode()[-500:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        return None if (ix / "CURRENT").exists() else done

    for _try in range(5):
        done_before = build_then_kill()
        if done_before is not None:
            break
    assert done_before is not None, "the build always finished before it could be killed"
    assert not (ix / "CURRENT").exists()  # nothing half-published
    with pytest.raises(IndexFormatError, match="not finished"):
        StudyIndex.open(ix)

    from hlip_engine.index.embed_pipeline import build_library

    report = build_library(lib, tiny["ckpt"], ix, workers=0, resume=True, progress=False, log=lambda m: None)
    assert report.already_done >= done_before >= 2
    assert report.already_done + report.indexed + len(report.skipped) == 5 and report.published
    index = StudyIndex.open(ix)
    meta = index.metadata(np.arange(len(index)))
    assert sorted(m["path"] for m in meta) == sorted(str(f) for f in folders)  # each study exactly once
    for m in meta[:3]:
        np.testing.assert_allclose(index.vectors([m["id"]])[0], _embed(tiny["model"], Path(m["path"])), atol=2e-3)
    # a later --resume with new studies adds only those; the old published version stays until the switch
    write_dicom_series(blob_scan(999, "MR", "AX T1"), lib / "new" / "s0", study_uid=f"{UID}99", series_number=1,
                       study_description="BRAIN NEW", study_date="20250101")
    report = build_library(lib, tiny["ckpt"], ix, workers=0, resume=True, progress=False, log=lambda m: None)
    assert (report.already_done, report.indexed) == (5, 1)
    assert len(StudyIndex.open(ix)) == 5 and len(index) == 4


def test_two_torchrun_ranks_build_one_index(tiny, tmp_path):
    lib = tiny["root"] / "library"
    ix = tmp_path / "ix"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "hlip_engine.index", "build", str(lib),
           "--model", str(tiny["ckpt"]), "--index", str(ix), "--workers", "0", "--no-progress"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "rank 1: " in run.stderr and "4 studies searchable" in run.stdout
    assert "merged 2 studies from other ranks" in run.stderr  # 5 studies: rank 1 took the 2nd and 4th
    assert not (ix / "shards").exists()  # merged into the main store, then removed
    index = StudyIndex.open(ix)
    assert len(index) == 4 and index.info["skipped"] == 1 and index.info["build"]["world_size"] == 2
    paths = sorted(m["path"] for m in index.metadata(np.arange(4)))
    assert paths == sorted(str(f) for f in tiny["folders"][:4])
    row = index.find(path=str(tiny["folders"][1]))
    np.testing.assert_allclose(index.vectors([row])[0], _embed(tiny["model"], tiny["folders"][1]), atol=2e-3)
