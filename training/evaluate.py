"""Evaluation during pre-training: the official zero-shot benchmarks, zero-shot on labelled held-out
studies, and study-report retrieval.

Zero-shot is :mod:`hlip_engine.evaluate` -- the code behind ``hlip evaluate`` -- so training measures
exactly what a released model is measured by:
  ``--eval BENCHMARK=ROOT[:LABELS]``  a benchmark in its official layout, under ``--eval-protocol``
                                     (every CT-RATE / Rad-ChestCT volume is a case; official metric names);
  ``--zeroshot-csv CSV``             held-out studies of the training data by id, classes from
                                     ``--prompt-set`` / ``--prompts``: a protocol built from those prompts
                                     and scored by the same functions (the CT-RATE and Rad-ChestCT prompt
                                     sets take the official protocol's prompts).
Retrieval: every held-out study ranks every held-out report (and vice versa); recall@k = how often its own
is in the top k.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from hlip_engine.evaluate import evaluate as evaluate_benchmark
from hlip_engine.evaluate import get_protocol, measure
from hlip_engine.evaluate.metric_sets import flatten
from hlip_engine.evaluate.protocols import Protocol
from hlip_engine.metrics import balanced_accuracy, roc_auc  # noqa: F401  (re-exported for callers)
from hlip_engine.zeroshot import resolve_prompt_set

OFFICIAL_ID_COLUMNS = {"VolumeName": "ct-rate", "NoteAcc_DEID": "rad-chestct"}


# --- metrics -----------------------------------------------------------------------------------------
def recall_at_k(image: torch.Tensor, text: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """image/text [S, E] normalised, row i of each belonging together."""
    sim = image @ text.T  # [S, S]
    target = torch.arange(sim.shape[0])
    out = {}
    for name, s in (("study_to_report", sim), ("report_to_study", sim.T)):
        rank = (s > s[target, target][:, None]).sum(dim=1)  # how many beat the true pair
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    return out


# --- official benchmarks (--eval) --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    benchmark: str
    root: str
    labels: str | None


def parse_eval_specs(items: list[str] | None) -> list[BenchmarkSpec]:
    """``BENCHMARK=ROOT[:LABELS]`` each; ValueError for an unknown benchmark or a malformed item."""
    from hlip_engine.evaluate import benchmarks

    specs = []
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--eval {item!r}: expected BENCHMARK=ROOT[:LABELS.csv]")
        name, rest = (s.strip() for s in item.split("=", 1))
        if name not in benchmarks():
            raise ValueError(f"--eval {item!r}: unknown benchmark {name!r}; known: {', '.join(benchmarks())}")
        root, labels = rest, None
        if ":" in rest and rest.rsplit(":", 1)[1].lower().endswith(".csv"):
            root, labels = rest.rsplit(":", 1)
        if name != "demo" and not labels:
            raise ValueError(f"--eval {item!r}: give the labels CSV as {name}=ROOT:LABELS.csv")
        specs.append(BenchmarkSpec(name, root, labels))
    return specs


def benchmark_metrics(model, specs: list[BenchmarkSpec], protocol: str = "paper") -> dict[str, float]:
    """Each benchmark through :func:`hlip_engine.evaluate.evaluate`; flat '<benchmark> <metric>' keys plus
    '<benchmark> cases' and '<benchmark> skipped'. The model's text tower need not be the protocol's."""
    out: dict[str, float] = {}
    for spec in specs:
        result = evaluate_benchmark(spec.benchmark, spec.root, spec.labels, model=model, protocol=protocol,
                                    allow_text_tower=True, progress=False)
        for key, value in flatten(result["metrics"]).items():
            out[f"{spec.benchmark} {key}"] = value
        out[f"{spec.benchmark} cases"] = float(result["cases"])
        out[f"{spec.benchmark} skipped"] = float(len(result["skipped"]))
    return out


# --- held-out studies (--zeroshot-csv) ---------------------------------------------------------------
def parse_free_prompts(prompts: list[str]) -> tuple[dict, str]:
    """``LABEL=TEXT`` (one class each: softmax) or ``LABEL=NEGATIVE|POSITIVE`` (binary labels)."""
    classes: dict[str, object] = {}
    for item in prompts:
        if "=" not in item:
            raise ValueError(f"prompt {item!r}: expected LABEL=TEXT or LABEL=NEGATIVE|POSITIVE")
        label, text = (s.strip() for s in item.split("=", 1))
        classes[label] = tuple(t.strip() for t in text.split("|", 1)) if "|" in text else text
    kinds = {isinstance(v, tuple) for v in classes.values()}
    if len(kinds) > 1:
        raise ValueError("free prompts mix classes (LABEL=TEXT) and binary labels (LABEL=NEGATIVE|POSITIVE)")
    return classes, "binary" if kinds == {True} else "softmax"


def read_labels(path: str | Path, id_column: str, label_columns: list[str] | None) -> tuple[list[str], dict]:
    """CSV -> (study ids, {column: values}); values stay strings (class names or 0/1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labelled CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    if id_column not in rows[0]:
        official = next((b for c, b in OFFICIAL_ID_COLUMNS.items() if c in rows[0]), None)
        hint = (f"; this is the official {official} labels file: use --eval {official}=ROOT:{path} (every "
                f"volume scored with the official protocol)") if official else "; see --zeroshot-id-column"
        raise ValueError(f"{path}: no id column {id_column!r} (columns: {list(rows[0])[:6]}){hint}")
    columns = label_columns or [c for c in rows[0] if c != id_column]
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: label columns {missing} not in the CSV")
    return [r[id_column] for r in rows], {c: [r[c] for r in rows] for c in columns}


def heldout_protocol(prompt_set: str = "", prompts: list[str] | None = None, columns: list[str] | None = None
                     ) -> Protocol:
    """A protocol for labelled held-out studies from a prompt set (name or JSON file) or free prompts.

    Binary (negative, positive) classes are scored as the official CT-RATE code scores them (P(positive) of
    the pair softmax, metrics at the ROC-closest threshold, 'auc (zeroshot)' the mean); softmax classes as
    one class per study ('balanced acc', AUC per class, 'mean auc'). The "ct-rate" and "rad-chestct" sets
    take the official paper protocol's prompts and template.
    """
    if prompts:
        classes, mode = parse_free_prompts(prompts)
        spec = {"binary_prompts" if mode == "binary" else "classes": classes, "templates": []}
    elif prompt_set in ("ct-rate", "rad-chestct"):
        official = get_protocol(prompt_set, "paper")
        spec = {"binary_prompts": dict(zip(official.names, official.prompts)),
                "templates": list(official.templates)}
    else:
        path = Path(prompt_set)
        spec = json.loads(path.read_text()) if path.suffix == ".json" and path.is_file() else \
            resolve_prompt_set(prompt_set)
    binary = "binary_prompts" in spec and "classes" not in spec
    table = spec["binary_prompts"] if binary else spec["classes"]
    templates = spec.get("templates") or []
    if isinstance(templates, dict):  # organ / volume sets: the volume templates
        templates = templates.get("volume") or next(iter(templates.values()))
    names = [n for n in table if columns is None or n in columns or not binary]
    if not names:
        raise ValueError(f"no label column matches the prompt classes {list(table)}")
    prompt_values = [tuple(table[n]) if binary else ([table[n]] if isinstance(table[n], str) else list(table[n]))
                     for n in names]
    return Protocol(benchmark="held-out", version="training", resolved="training",
                    source="labelled held-out studies (--zeroshot-csv)", layout="training", id_column="",
                    labels=tuple(names), names=tuple(names), prompts=tuple(prompt_values),
                    templates=tuple(templates or ["{}"]), score="pair-softmax" if binary else "softmax",
                    input={"kind": "training"}, metrics="threshold" if binary else "classes",
                    prefix="zeroshot")


def heldout_targets(protocol: Protocol, labels: dict) -> np.ndarray:
    """{column: values} -> [S, K] 0/1 targets in the protocol's class order."""
    if protocol.score == "pair-softmax":
        return np.array([[float(v) > 0.5 for v in labels[n]] for n in protocol.names], dtype=int).T
    names = list(protocol.names)
    if len(labels) == 1:
        values = next(iter(labels.values()))
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"labels {unknown} have no prompt (classes: {names})")
        return np.eye(len(names), dtype=int)[[names.index(v) for v in values]]
    missing = [n for n in names if n not in labels]
    if missing:
        raise ValueError(f"label columns {list(labels)} lack the prompt classes {missing}")
    onehot = np.array([[float(v) for v in labels[n]] for n in names]).T
    return np.eye(len(names), dtype=int)[onehot.argmax(1)]


def zeroshot_metrics(model, image: torch.Tensor, labels: dict, protocol: Protocol, ids: list[str]) -> dict:
    """image [S, E] normalised; ``labels`` {column: values} from :func:`read_labels`, same order.
    -> the protocol's metrics, flat, prefixed 'zeroshot ', plus 'zeroshot_macro_auc' (the mean AUC)."""
    targets = heldout_targets(protocol, labels)
    result = measure(model, protocol, image.float().numpy(), targets, ids)["metrics"]
    out = {f"zeroshot {k}": v for k, v in flatten(result).items()}
    out["zeroshot_macro_auc"] = result["auc (zeroshot)"] if protocol.score == "pair-softmax" else result["mean auc"]
    return out


# --- the evaluation pass -----------------------------------------------------------------------------
@torch.no_grad()
def encode_studies(model, dataset, indices: list[int], device, autocast) -> tuple[torch.Tensor, list[str]]:
    """Every scan of each study (batch of one study, as at inference): ([S, E] normalised, reports)."""
    images, reports = [], []
    for i in indices:
        scans, report, _ = dataset[i]
        with autocast():
            images.append(model.encode_image(scans[None].to(device), normalize=True).float().cpu())
        reports.append(report)
    return torch.cat(images), reports


@torch.no_grad()
def evaluate(model, dataset, *, device, autocast, ks=(1, 5, 10), max_studies: int = 0,
             zeroshot: tuple | None = None, benchmarks: list[BenchmarkSpec] | None = None,
             protocol: str = "paper") -> dict[str, float]:
    """Retrieval on ``dataset`` (eval mode: all scans, sentences in order), held-out zero-shot when
    configured, and the official ``benchmarks`` under ``protocol``.

    ``zeroshot`` = (ids, labels, prompt_set, prompts) from :func:`read_labels` and the prompt options; every
    id must be a study of ``dataset`` (ValueError saying how many matched, with three that did not).
    """
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    n = len(dataset) if not max_studies else min(len(dataset), max_studies)
    if n >= 2:
        image, reports = encode_studies(model, dataset, list(range(n)), device, autocast)
        with autocast():
            text = model.encode_text(reports, normalize=True).float().cpu()
        out.update(recall_at_k(image, text, ks))
        out["eval_studies"] = float(n)
    if zeroshot is not None:
        ids, labels, prompt_set, prompts = zeroshot
        where = {dataset.study_id(i): i for i in range(len(dataset))}
        unmatched = [sid for sid in ids if sid not in where]
        if unmatched:
            raise ValueError(f"--zeroshot-csv: {len(ids) - len(unmatched)} of {len(ids)} ids are studies of the "
                             f"evaluation data; unmatched: {', '.join(unmatched[:3])}")
        proto = heldout_protocol(prompt_set, prompts, list(labels))
        image, _ = encode_studies(model, dataset, [where[sid] for sid in ids], device, autocast)
        with autocast():
            out.update(zeroshot_metrics(model, image, labels, proto, list(ids)))
        out["zeroshot_studies"] = float(len(ids))
    if benchmarks:
        with autocast():
            out.update(benchmark_metrics(model, benchmarks, protocol))
    model.train(was_training)
    return out
