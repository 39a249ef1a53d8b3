"""Where evaluation data comes from: the DICOM release of a head-CT benchmark (read by the engine's loader
and prepared by the model's recipe), the demo's phantom protocol, and torchrun-sharded encoding."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hlip_engine.evaluate import evaluate, get_protocol, measure
from hlip_engine.evaluate.datasets import input_grid, list_cases, load_case
from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.model import create_model, load_model
from hlip_engine.study import Scan

torch.set_num_threads(2)
CQ = ["ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right", "Fracture",
      "MassEffect", "MidlineShift"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(1)
    return create_model("hlip_tiny").eval().save(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, device="cpu")


def _ct_series(folder: Path, seed: int, uid: str):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:12, :40, :40]
    head = (((yy - 20) ** 2 + (xx - 20) ** 2) < 300) * 40.0 + rng.normal(0, 5, zz.shape)
    scan = Scan(head.astype(np.float32), np.diag([0.5, 0.5, 5.0, 1.0]), modality="CT", description="CT 5mm")
    write_dicom_series(scan, folder, study_uid=uid, series_number=2, study_description="CT HEAD")


def test_cq500_dicom_release_is_read_by_the_loader_with_the_head_ct_recipe(model, tmp_path):
    root = tmp_path / "cq500"
    _ct_series(root / "CQ500CT0 CQ500CT0" / "Unknown Study" / "CT 5mm", 0, "1.2.826.0.1.3680043.8.498.10")
    _ct_series(root / "CQ500CT1 CQ500CT1" / "Unknown Study" / "CT 5mm", 1, "1.2.826.0.1.3680043.8.498.11")
    rows = [["CQ500CT000", *[1] * 11], ["CQ500CT001", *[0] * 11]]  # the official CSV's ids
    labels = tmp_path / "cq500.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["study", *CQ], *rows])
    proto = get_protocol("cq500", "2026")
    cases, unmatched, _ = list_cases(proto, root, ["CQ500CT000", "CQ500CT001"])
    assert unmatched == [] and [c.kind for c in cases] == ["dicom", "dicom"]
    assert cases[0].folder.name == "CQ500CT0 CQ500CT0"
    x = load_case(cases[0], input_grid(proto, model), model)
    expected = model.prepare(load_study(cases[0].folder), "head-ct").tensor
    assert x.shape[0] == 3 and torch.equal(x, torch.as_tensor(expected))  # blood, brain, bone windows
    result = evaluate("cq500", root, labels, model=model, protocol="paper", allow_text_tower=True, progress=False)
    assert result["protocol_data"] == "2026" and result["cases"] == 2
    assert set(result["metrics"]) == {f"auc ({n})" for n in proto.names} | {"auc (cq500)"}


def test_demo_quality_is_the_demo_protocol_of_evaluate(model):
    from hlip_engine.demo.quality import FINDING_PROMPTS, TEMPLATES, zeroshot_auc

    demo = get_protocol("demo")
    assert FINDING_PROMPTS == {n: list(p) for n, p in zip(demo.names, demo.prompts)} and TEMPLATES == list(demo.templates)
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(10, 64))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = [{f: int(f == demo.names[i % 4]) for f in demo.names} for i in range(10)]  # atrophy absent
    quality = zeroshot_auc(model, emb, labels)
    targets = np.array([[lab[f] for f in demo.names] for lab in labels])
    with pytest.warns(UserWarning, match="'atrophy': one label value"):
        result = measure(model, demo, emb, targets, [str(i) for i in range(10)])
    probs = result["scores"]
    assert np.allclose(probs.sum(1), 1.0)
    assert quality["tumour"] == pytest.approx(roc_auc_score(targets[:, 1], probs[:, 1]))
    assert "atrophy" not in quality and quality["macro"] == pytest.approx(result["metrics"]["auc (macro)"])


@pytest.mark.slow
def test_torchrun_sharded_encoding_gives_the_single_process_result(ckpt, tmp_path):
    root = tmp_path / "mr_rate"
    rng = np.random.default_rng(4)
    names = get_protocol("mr-rate", "2026").labels
    rows = []
    for i in range(5):
        for k in range(2):
            d = root / f"study{i}" / f"scan{k}"
            d.mkdir(parents=True)
            torch.save(torch.from_numpy(rng.integers(0, 256, (16, 32, 32), dtype=np.uint8)), d / "img.pt")
        rows.append([f"study{i}", *[(i + j) % 2 for j in range(len(names))]])
    labels = tmp_path / "mr.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["study_uid", *names], *rows])
    args = ["mr-rate", "--data", str(root), "--labels", str(labels), "--model", str(ckpt), "--device", "cpu",
            "--protocol", "2026", "--allow-text-tower", "--json", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    run = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                          "hlip_engine.evaluate", *args, "--out", str(tmp_path / "dist")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    sharded = json.loads(run.stdout[run.stdout.index("{"):])  # rank 0 alone prints the report
    assert run.stdout.count('"benchmark"') == 1 and sharded["cases"] == 5
    assert sharded["encoding"] == {"world_size": 2, "encoded_per_rank": [3, 2]}  # every other case per rank
    assert sharded["cache"]["misses"] == 5 and len(list((tmp_path / "dist" / "embeddings").rglob("*.npy"))) == 5
    single = evaluate("mr-rate", root, labels, model=load_model(ckpt, device="cpu"), protocol="2026",
                      allow_text_tower=True, progress=False)
    assert sharded["metrics"]["auc (mri)"] == pytest.approx(single["metrics"]["auc (mri)"], abs=1e-6)
