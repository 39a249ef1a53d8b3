"""`hlip index add`: studies join an index built by `hlip index build` without a rebuild, once each
(real DICOM, a tiny real model, real FAISS)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from blob_scans import blob_scan

from hlip_engine.cli import main as hlip
from hlip_engine.index import StudyIndex
from hlip_engine.io import write_dicom_series

UID = "1.2.826.0.1.3680043.8.498.78."


def write_study(folder: Path, i: int) -> Path:
    for s in range(2):
        write_dicom_series(blob_scan(100 * i + s, "MR", f"AX T{s + 1}"), folder / f"s{s}", study_uid=f"{UID}{i}",
                           series_number=s + 1, study_description=f"BRAIN {i}", study_date="20240110")
    return folder


def test_index_add_joins_a_built_index_once_per_study(tmp_path, capsys):
    from hlip_engine.model import create_model

    torch.manual_seed(0)
    ckpt = create_model("hlip_tiny").save(tmp_path / "tiny.safetensors")
    for i in range(2):
        write_study(tmp_path / "lib" / f"st{i}", i)
    ix = tmp_path / "lib.index"
    assert hlip(["index", "build", str(tmp_path / "lib"), "--model", str(ckpt), "--index", str(ix),
                 "--workers", "0", "--no-progress"]) == 0
    built = StudyIndex.open(ix)
    assert len(built) == 2
    capsys.readouterr()

    # arrivals: a copy of study 0 elsewhere (same StudyInstanceUID), and two new studies
    shutil.copytree(tmp_path / "lib" / "st0", tmp_path / "new" / "copy0")
    write_study(tmp_path / "new" / "st2", 2)
    write_study(tmp_path / "new" / "st3", 3)
    assert hlip(["index", "add", str(tmp_path / "new"), "--model", str(ckpt), "--index", str(ix)]) == 0
    out = capsys.readouterr().out
    assert "2 added, 0 replaced (changed), 1 already indexed" in out and "4 studies searchable" in out
    index = StudyIndex.open(ix, verify=True)
    uids = sorted(m["study_uid"] for m in index.metadata(np.arange(len(index))))
    assert uids == [f"{UID}{i}" for i in range(4)]
    row = index.find(study_uid=f"{UID}3")
    assert index.search(index.vectors([row]), k=1)[1][0, 0] == row  # searchable at once
    assert index.version != built.version and index.info["trained_count"] == 2

    # the same folder again: nothing added; a build --resume afterwards sees every study as done
    assert hlip(["index", "add", str(tmp_path / "new"), "--model", str(ckpt), "--index", str(ix)]) == 0
    assert "0 added, 0 replaced (changed), 3 already indexed" in capsys.readouterr().out
    assert len(StudyIndex.open(ix)) == 4
    # another model is refused with one clear line, and the index is left as it was
    torch.manual_seed(1)
    other = create_model("hlip_tiny").save(tmp_path / "other.safetensors")
    assert hlip(["index", "add", str(tmp_path / "new"), "--model", str(other), "--index", str(ix)]) == 2
    assert "--rebuild" in capsys.readouterr().err and len(StudyIndex.open(ix)) == 4
