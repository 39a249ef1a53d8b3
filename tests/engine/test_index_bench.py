"""bench/index_bench.py runs end to end at a tiny size (the 1M-study figures come from the same code)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "index_bench.py"


def test_index_bench_tiny(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the bench's phases run in spawned processes
    bench = importlib.import_module("index_bench")
    out = tmp_path / "figures.json"
    assert bench.main(["--n", "4000", "--dim", "64", "--clusters", "40", "--queries", "40", "--flat-queries", "5",
                       "--index-type", "ivf", "--json", str(out), "--dir", str(tmp_path / "ix")]) == 0
    figures = json.loads(out.read_text())
    assert figures["n"] == 4000 and figures["index"]["type"] == "ivf_sq8"
    assert figures["recall_at_10"] >= 0.95 and figures["query_p50_ms"] > 0 and figures["flat_p50_ms"] > 0
    printed = capsys.readouterr().out
    assert "recall@10 vs exact" in printed and "exact IndexFlatIP baseline" in printed
