"""One evaluation: labels CSV + benchmark data + model -> the official metrics (and the extras).

:func:`evaluate` is what ``hlip evaluate``, ``torchrun -m hlip_engine.evaluate`` and training's in-run
evaluation call; :func:`measure` is its scoring half for embeddings already at hand.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .bootstrap import bootstrap_ci
from .datasets import input_grid, list_cases, targets_of
from .encode import encode_cases, rank_and_world
from .labels import read_labels
from .metric_sets import compute
from .protocols import get_protocol
from .scoring import protocol_classifier, protocol_scores


def check_text_tower(model, protocol, allow: bool = False) -> str | None:
    """ValueError when the model's text tower is not one the protocol's official code used; with ``allow``
    the mismatch is returned as a deviation note instead."""
    name = ((model.config.get("text") or {}).get("model") or "?") if model is not None else "?"
    if not protocol.text or name in protocol.text:
        return None
    why = (f"the model's text tower {name} is not the tokenizer of the official {protocol.benchmark} "
           f"protocol ({', '.join(protocol.text)})")
    if not allow:
        raise ValueError(f"{why}; pass --allow-text-tower to evaluate anyway (not the official protocol)")
    return why


def single_valued(protocol, targets) -> list[str]:
    return [f"class {n!r}: one label value in all {len(targets)} cases, its AUC is NaN"
            for k, n in enumerate(protocol.names) if np.unique(targets[:, k]).size < 2]


def measure(model, protocol, embeddings, targets, ids, *, bootstrap: int = 0, seed: int = 0,
            classifier=None) -> dict:
    """Embeddings [S, E] of the cases, their targets [S, K] and ids -> {"metrics", "scores", "preds",
    "warnings", "ci"} under ``protocol``."""
    import torch

    if classifier is None:
        with torch.no_grad():
            classifier = protocol_classifier(model, protocol)
    scores, preds = protocol_scores(classifier, embeddings, protocol.score)
    notes = single_valued(protocol, targets)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = compute(protocol, targets, scores, ids, preds)
    ci = bootstrap_ci(protocol, targets, scores, ids, preds, rounds=bootstrap, seed=seed) if bootstrap else {}
    return {"metrics": metrics, "scores": scores, "preds": preds, "warnings": notes, "ci": ci}


def evaluate(benchmark: str, data, labels=None, *, model, protocol: str = "paper", checkpoint=None,
             fingerprint: str | None = None, out=None, bootstrap: int = 0, seed: int = 0, cache_dir=None,
             allow_text_tower: bool = False, allow_missing: bool = False, progress: bool = True) -> dict | None:
    """Run ``benchmark`` under ``protocol`` ("paper" or "2026") and return the report (None on ranks > 0
    under torchrun). ``out``: also write results.json, scores.csv and roc/*.png there.

    Raises ValueError for a labels CSV whose ids match no data, or only some (unless ``allow_missing``):
    the message says how many matched and shows three unmatched ids.
    """
    proto = get_protocol(benchmark, protocol)
    data = Path(data)
    if labels is None:
        if benchmark != "demo":
            raise ValueError(f"{benchmark}: --labels CSV is required")
        labels = data / "labels.csv"
    deviations = [d for d in [check_text_tower(model, proto, allow_text_tower)] if d]
    rows = read_labels(labels, proto)
    cases, unmatched, empty = list_cases(proto, data, rows.ids)
    if unmatched and (not cases or not allow_missing):
        matched = len(rows.ids) - len(unmatched)
        raise ValueError(f"{labels}: {matched} of {len(rows.ids)} ids in column {proto.id_column!r} match "
                         f"{proto.benchmark} data under {data}; unmatched: {', '.join(unmatched[:3])}"
                         + (" ..." if len(unmatched) > 3 else "")
                         + ("" if not cases else " (--allow-missing scores the matched ones)"))
    grid = input_grid(proto, model)
    official = proto.input.get("official_grid")
    if isinstance(official, list):
        used = grid.get("target") or [grid.get("slices"), grid.get("crop"), grid.get("crop")]
        if list(used) != list(official):
            deviations.append(f"input grid {used} (the model's) instead of the official {official}")
    cache = None
    if fingerprint is None and checkpoint is not None:
        from ..model.checkpoint import model_fingerprint

        fingerprint = model_fingerprint(checkpoint)
    if fingerprint and (cache_dir or out):
        from .cache import EmbeddingCache

        cache = EmbeddingCache(Path(cache_dir) if cache_dir else Path(out) / "embeddings", fingerprint)
    embeddings, failed, encoding = encode_cases(model, cases, grid, cache=cache, progress=progress,
                                      desc=f"{benchmark} ({protocol})")
    if rank_and_world()[0] != 0:
        return None
    ok = [i for i in range(len(cases)) if not np.isnan(embeddings[i]).any()]
    if not ok:
        raise ValueError(f"{data}: no {benchmark} case could be encoded"
                         + (f"; first: {failed[0][0]}: {failed[0][1]}" if failed else ""))
    kept = [cases[i] for i in ok]
    ids = [c.id for c in kept]
    targets = targets_of(kept, rows.targets)
    measured = measure(model, proto, embeddings[ok], targets, ids, bootstrap=bootstrap, seed=seed)
    result = {
        "benchmark": benchmark, "protocol": protocol, "protocol_data": proto.resolved,
        "protocol_source": proto.source, "model": str(checkpoint) if checkpoint else None,
        "model_fingerprint": fingerprint, "labels": str(labels), "data": str(data), "cases": len(kept),
        "rows": len(rows.ids), "unmatched": unmatched, "skipped": [*empty, *failed], "input": grid,
        "deviations": deviations, "metrics": measured["metrics"], "warnings": measured["warnings"],
        "ci": measured["ci"], "bootstrap": {"rounds": bootstrap, "seed": seed} if bootstrap else None,
        "encoding": encoding,
        "cache": {"hits": cache.hits, "misses": cache.misses, "folder": str(cache.folder)} if cache else None,
    }
    if out:
        from .report import to_json, write_roc_pngs, write_scores_csv

        out = Path(out)
        names = list(proto.names)
        write_scores_csv(out / "scores.csv", ids, names, targets, measured["scores"])
        result["roc"] = [str(p) for p in write_roc_pngs(out / "roc", names, targets, measured["scores"],
                                                         f"{benchmark} ({protocol})")]
        from ..atomic import atomic_write

        with atomic_write(out / "results.json") as tmp:
            Path(tmp).write_text(to_json(result), encoding="utf-8")
    return result
