"""Evaluation during pre-training: zero-shot classification from a labelled CSV, and study-report retrieval.

Zero-shot uses the engine's classifier (``hlip_engine.zeroshot``: templates x prompts encoded,
normalised, averaged, re-normalised; softmax over the classes, or over (negative, positive) per label,
CT-RATE style), so training measures exactly what the plugin will show. Metrics: balanced accuracy and macro AUC (one-vs-rest). Retrieval: every held-out
study ranks every held-out report (and vice versa); recall@k = how often its own is in the top k.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from hlip_engine.metrics import balanced_accuracy, roc_auc


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


# --- prompts (the engine's zero-shot classifier) ------------------------------------------------------
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


def make_classifier(model, prompt_set: str = "", prompts: list[str] | None = None):
    """hlip_engine.zeroshot's classifier from a named set / JSON file of the same shape, or free prompts."""
    from hlip_engine.zeroshot import build_classifier

    if prompts:
        classes, mode = parse_free_prompts(prompts)
        return build_classifier(model, prompts=classes, mode=mode)
    path = Path(prompt_set)
    if path.suffix == ".json" and path.is_file():
        return build_classifier(model, prompt_set=json.loads(path.read_text()))
    return build_classifier(model, prompt_set=prompt_set)


# --- labels ------------------------------------------------------------------------------------------
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
        raise ValueError(f"{path}: no id column {id_column!r} (columns: {list(rows[0])}); see --zeroshot-id-column")
    columns = label_columns or [c for c in rows[0] if c != id_column]
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: label columns {missing} not in the CSV")
    return [r[id_column] for r in rows], {c: [r[c] for r in rows] for c in columns}


def zeroshot_metrics(image: torch.Tensor, labels: dict, classifier) -> dict[str, float]:
    """image [S, E] normalised; ``labels`` {column: values} from :func:`read_labels`, same order.

    softmax classifier: one column of class names, or one-hot columns named like the classes;
    binary classifier: a 0/1 column per class (classes without a column are ignored).
    """
    probs = classifier.probabilities(image.float()).numpy()  # [S, K]
    names = classifier.names
    out: dict[str, float] = {}
    if classifier.mode == "softmax":
        if len(labels) == 1:
            values = next(iter(labels.values()))
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"labels {unknown} have no prompt (classes: {names})")
            y = np.array([names.index(v) for v in values])
        else:
            missing = [n for n in names if n not in labels]
            if missing:
                raise ValueError(f"label columns {list(labels)} lack the prompt classes {missing}")
            y = np.argmax(np.array([[float(v) for v in labels[n]] for n in names]), axis=0)
        out["zeroshot_balanced_acc"] = balanced_accuracy(y, probs.argmax(1))
        aucs = [roc_auc(y == c, probs[:, c]) for c in range(len(names))]
    else:
        aucs, accs = [], []
        for k, name in enumerate(names):
            if name in labels:
                y = np.array([float(v) > 0.5 for v in labels[name]])
                aucs.append(roc_auc(y, probs[:, k]))
                accs.append(balanced_accuracy(y.astype(int), (probs[:, k] > 0.5).astype(int)))
        if not aucs:
            raise ValueError(f"no label column matches the prompt classes {names}")
        out["zeroshot_balanced_acc"] = float(np.mean(accs))
    valid = [a for a in aucs if not np.isnan(a)]
    out["zeroshot_macro_auc"] = float(np.mean(valid)) if valid else float("nan")
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
             zeroshot: tuple | None = None) -> dict[str, float]:
    """Retrieval on ``dataset`` (eval mode: all scans, sentences in order) and zero-shot when configured.

    ``zeroshot`` = (ids, labels, prompt_set, prompts): :func:`read_labels` and the prompt options; the
    studies are looked up in ``dataset`` by id and those absent are skipped.
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
        keep = [k for k, sid in enumerate(ids) if sid in where]
        if keep:
            image, _ = encode_studies(model, dataset, [where[ids[k]] for k in keep], device, autocast)
            with autocast():
                classifier = make_classifier(model, prompt_set, prompts)
            out.update(zeroshot_metrics(image, {c: [v[k] for k in keep] for c, v in labels.items()}, classifier))
            out["zeroshot_studies"] = float(len(keep))
    model.train(was_training)
    return out
