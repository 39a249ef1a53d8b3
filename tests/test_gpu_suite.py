"""bench/gpu_suite.sh --dry-run: every section of the one-call GPU suite runs on CPU at tiny sizes, so the
suite cannot rot between the rare sessions that have a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_suite_dry_run_runs_every_section(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "REF_DIR": str(tmp_path / "no-ref")}
    proc = subprocess.run([str(REPO / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert json.loads(proc.stdout) == doc  # the same one document on stdout
    assert doc["dry_run"] is True and doc["errors"] == {} and doc["seconds"] < 120
    enc = doc["encode"]
    assert enc["eager"]["studies_per_s"] > 0 and enc["compiled"]["studies_per_s"] > 0
    assert enc["compiled"]["cosine_to_eager_min"] > 0.999  # the compiled graph computes the same embeddings
    assert doc["latency"]["s"] > 0 and doc["latency"]["scans"] == 3
    rel = doc["relevance"]
    assert rel["tokens_finite"] and rel["tokens_positive"] and rel["tokens_shape"][0] == 3
    assert rel["time_ratio"] > 0
    assert [r["grad_checkpointing"] for r in doc["train"]] == [False, True]
    assert all(r["studies_per_s"] > 0 for r in doc["train"])
    faiss = doc["faiss"]
    assert faiss["self_found_at_1"] == 1.0 and faiss["gpu"] is False and faiss["fallback"]
    assert doc["official"]["ran"] is False and "not carried" in doc["official"]["why"]
    assert set(doc["ratios"]) >= {"encode_eager_vs_official", "train_vs_official"}
    assert all(v is None for v in doc["ratios"].values())  # CPU figures are not compared with the H200's
