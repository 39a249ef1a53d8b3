"""What an evaluation leaves behind: per-case scores CSV, one ROC curve PNG per class, results JSON, and
the plain-text summary printed by ``hlip evaluate``."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .metric_sets import flatten


def roc_points(y, score) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) from (0, 0) to (1, 1), one point per distinct score."""
    y = np.asarray(y).astype(int) == 1
    s = np.asarray(score, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(1, (~y).sum())], np.r_[0.0, tp / max(1, y.sum())]


def write_scores_csv(path, ids, names, targets, scores) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", *(f"label: {n}" for n in names), *(f"score: {n}" for n in names)])
    for i, case in enumerate(ids):
        w.writerow([case, *(int(v) for v in targets[i]), *(f"{v:.6g}" for v in scores[i])])
    with atomic_write(Path(path)) as tmp:
        Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
    return Path(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def write_roc_pngs(folder, names, targets, scores, title: str) -> list[Path]:
    """One ``roc_<class>.png`` per class that holds both label values."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from .metrics import auc

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, name in enumerate(names):
        y = targets[:, k]
        if np.unique(y).size < 2:
            continue
        fpr, tpr = roc_points(y, scores[:, k])
        fig = Figure(figsize=(4.2, 4.2), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(fpr, tpr, color="#3b7dd8", lw=1.6, label=f"AUC {auc(y, scores[:, k]):.3f} (n={len(y)})")
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = folder / f"roc_{_safe(name)}.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def to_json(result: dict) -> str:
    """Strict JSON (NaN as null)."""
    return json.dumps(_clean(result), indent=1, ensure_ascii=False)


def text_summary(result: dict) -> str:
    lines = [f"{result['benchmark']} (protocol {result['protocol']}: {result['protocol_source']})",
             f"  {result['cases']} cases scored, {len(result['skipped'])} skipped"
             + (f"; model {result['model']}" if result.get("model") else "")]
    ci = result.get("ci") or {}
    for key, value in flatten(result["metrics"]).items():
        band = ci.get(key)
        extra = f"  [{band[0]:.4f}, {band[1]:.4f}]" if band and not any(map(math.isnan, band)) else ""
        lines.append(f"{key}: {value:.4f}{extra}")
    for why in result.get("warnings", []):
        lines.append(f"warning: {why}")
    for case, why in result["skipped"][:10]:
        lines.append(f"skipped {case}: {why}")
    return "\n".join(lines)
