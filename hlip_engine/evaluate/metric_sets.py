"""The official metric sets: per benchmark, which numbers the official script computes and the names it
prints or saves them under. Each takes targets [S, K] (0/1), scores [S, K] and the case ids, and returns
the official result structure (nested where the official JSON is nested).
"""
from __future__ import annotations

import numpy as np

from . import metrics as m


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def merged_calcification(targets, scores, preds, protocol):
    """Rad-ChestCT: the two calcification columns reported as one class (labels of the first source; score
    the larger of the two when either passes 0.5, else the smaller; predicted when either is) appended after
    the other classes. -> (names, targets, scores, preds)."""
    names = list(protocol.names)
    if not protocol.merge:
        return names, targets, scores, preds
    merge = protocol.merge
    a, b = (names.index(c) for c in merge["from"])
    keep = [i for i, n in enumerate(names) if n not in merge["from"]]
    sa, sb = scores[:, a], scores[:, b]
    merged = np.where((sa > 0.5) | (sb > 0.5), np.maximum(sa, sb), np.minimum(sa, sb))
    labels_of = names.index(merge["labels_of"])
    t = np.column_stack([targets[:, keep], targets[:, labels_of]])
    s = np.column_stack([scores[:, keep], merged])
    p = None if preds is None else np.column_stack([preds[:, keep], (preds[:, a] + preds[:, b] > 0).astype(int)])
    return [names[i] for i in keep] + [merge["name"]], t, s, p


def threshold_paper(protocol, targets, scores, ids, preds=None) -> dict:
    """CT-RATE / Rad-ChestCT, 2025 scripts: per class, at the 2-way argmax ('acc (balanced)', 'f1 (weighted)',
    'recall', 'precision') and at the ROC-closest threshold ('auc', '* acc (balanced)' -- plain accuracy,
    as the official code computes it under that name -- '* f1 (weighted)', '* recall', '* precision');
    'mean' and '* mean' are plain means over the classes."""
    names, t, s, p = merged_calcification(targets, scores, preds, protocol)
    p = (s > 0.5).astype(int) if p is None else p
    out: dict = {n: {} for n in names}
    first = {"acc (balanced)": [], "f1 (weighted)": [], "recall": [], "precision": []}
    second = {"auc": [], "* acc (balanced)": [], "* f1 (weighted)": [], "* recall": [], "* precision": []}
    for k, n in enumerate(names):
        y = t[:, k]
        row = {"acc (balanced)": m.balanced_accuracy(y, p[:, k]), "f1 (weighted)": m.weighted_f1(y, p[:, k]),
               "recall": m.recall(y, p[:, k]), "precision": m.precision(y, p[:, k])}
        out[n].update(row)
        for key, v in row.items():
            first[key].append(v)
    out["mean"] = {f"mean {key}": float(np.mean(v)) for key, v in first.items()}
    for k, n in enumerate(names):
        y, score = t[:, k], s[:, k]
        threshold = m.find_threshold(y, score)
        pred = (score > threshold).astype(int)
        row = {"auc": m.auc(y, score), "* acc (balanced)": m.accuracy(y, pred), "* f1 (weighted)": m.weighted_f1(y, pred),
               "* recall": m.recall(y, pred), "* precision": m.precision(y, pred)}
        if np.isnan(threshold):
            row = {key: float("nan") for key in row}
        out[n].update(row)
        for key, v in row.items():
            second[key].append(v)
    out["* mean"] = {("mean auc" if key == "auc" else f"* mean {key[2:]}"): float(np.mean(v))
                     for key, v in second.items()}
    return out


def threshold(protocol, targets, scores, ids, preds=None) -> dict:
    """CT-RATE / Rad-ChestCT, 2026 scripts: per class at the ROC-closest threshold, flat keys
    '<metric> (<prefix>_<class>)', then NaN-skipping means '<metric> (<prefix>)'."""
    names, t, s, _ = merged_calcification(targets, scores, preds, protocol)
    pre = protocol.prefix
    out: dict = {}
    collected = {"auc": [], "acc": [], "weighted_f1": [], "precision": [], "recall": []}
    for k, n in enumerate(names):
        y, score = t[:, k], s[:, k]
        cut = m.find_threshold(y, score)
        pred = (score > cut).astype(int)
        row = {"auc": m.auc(y, score), "acc": m.accuracy(y, pred), "weighted_f1": m.weighted_f1(y, pred),
               "precision": m.precision(y, pred), "recall": m.recall(y, pred)}
        if np.isnan(cut):
            row.update(acc=float("nan"), weighted_f1=float("nan"), precision=float("nan"), recall=float("nan"))
        for key, v in row.items():
            out[f"{key} ({pre}_{n})"] = float(v)
            collected[key].append(v)
    for key, v in collected.items():
        out[f"{key} ({pre})"] = float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")
    return out


def multilabel_auc(protocol, targets, scores, ids, preds=None) -> dict:
    """RSNA / CQ500: 'auc (<class>)' per class and 'auc (<prefix>)', the macro mean (NaN when any class has
    one label value)."""
    out = {f"auc ({n})": m.auc(targets[:, k], scores[:, k]) for k, n in enumerate(protocol.names)}
    out[f"auc ({protocol.prefix})"] = m.multilabel_macro_auc(targets, scores)
    return out


def mean_auc_present(protocol, targets, scores, ids, preds=None) -> dict:
    """MR-RATE: 'auc (mri)', the mean AUC over the labels that hold both values (the others are skipped)."""
    values = [m.auc(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return {f"auc ({protocol.prefix})": float(np.mean(values)) if values else float("nan")}


def ovr_auc(protocol, targets, scores, ids, preds=None) -> dict:
    """One-vs-rest AUC of each class's probability, 'auc (<class>)', and their NaN-skipping mean
    'auc (<prefix>)'."""
    out = {f"auc ({n})": m.auc(targets[:, k], scores[:, k]) for k, n in enumerate(protocol.names)}
    values = [v for v in out.values() if not np.isnan(v)]
    out[f"auc ({protocol.prefix})"] = float(np.mean(values)) if values else float("nan")
    return out


def classes(protocol, targets, scores, ids, preds=None) -> dict:
    """One class per case (softmax over all classes): 'balanced acc' of the argmax, 'auc (<class>)' one
    vs rest and their NaN-skipping mean 'mean auc'."""
    out = {"balanced acc": m.balanced_accuracy(np.asarray(targets).argmax(1), np.asarray(scores).argmax(1))}
    aucs = {f"auc ({n})": m.auc(targets[:, k], scores[:, k]) for k, n in enumerate(protocol.names)}
    out.update(aucs)
    values = [v for v in aucs.values() if not np.isnan(v)]
    out["mean auc"] = float(np.mean(values)) if values else float("nan")
    return out


def _detection(y, logits2) -> tuple[float, float, float, float, float]:
    p = _softmax(logits2)
    score, pred = p[:, 1], p.argmax(1)
    return (m.balanced_accuracy(y, pred), m.weighted_f1(y, pred), m.recall(y, pred), m.precision(y, pred),
            m.auc(y, score))


def pubbrain5_paper(protocol, targets, scores, ids, preds=None) -> dict:
    """Pub-Brain-5, 2025 script: each task takes the studies whose path contains one of its words; 2-way
    detection = softmax over (normal, disease) logits, argmax prediction; 3- and 5-way = softmax over the
    task's classes, balanced accuracy of the argmax and macro AUC of the one-hot targets."""
    out: dict = {}
    for task in protocol.tasks:
        words = task["where"]
        rows = [i for i, sid in enumerate(ids) if not words or any(w in sid for w in words)]
        if not rows:
            continue
        cols = task["columns"]
        logits = scores[np.ix_(rows, cols)]
        if task["kind"] == "detection":
            y = targets[rows, cols[1]]
            acc, f1, rec, prec, auc = _detection(y, logits)
            out[task["name"]] = {"Balanced Acc": acc, task.get("f1_name", "Weighted F1"): f1, "Recall": rec,
                                 "Precision": prec, "Macro AUC": auc}
        else:
            y = targets[np.ix_(rows, cols)]
            p = _softmax(logits)
            out[task["name"]] = {"Balanced Acc": m.balanced_accuracy(y.argmax(1), p.argmax(1)),
                                 "Macro AUC": m.multilabel_macro_auc(y, p)}
    return out


def _three(y, pred, score) -> tuple[float, float, float]:
    return m.auc(y, score), m.weighted_f1(y, pred), m.balanced_accuracy(y, pred)


def pubbrain5(protocol, targets, scores, ids, preds=None) -> dict:
    """Pub-Brain-5, 2026 script: anomaly = for each disease the studies labelled normal or that disease,
    softmax over the two logits, predicted at >= 0.5; tumour = studies with exactly one tumour label, 3-way
    softmax; disease = all studies, 5-way softmax; per-class one-vs-rest entries predicted at >= 0.5."""
    t = np.asarray(targets, dtype=float)
    out: dict = {}
    collected: dict[str, list] = {"auc": [], "weighted_f1": [], "balanced_acc": []}
    for disease, c in {"stroke": 1, "glioma": 2, "meningioma": 3, "metastasis": 4}.items():
        mask = t[:, 0] + t[:, c] == 1.0
        y = t[mask, c].astype(int)
        score = _softmax(scores[mask][:, [0, c]])[:, 1]
        values = _three(y, (score >= 0.5).astype(int), score)
        for key, v in zip(collected, values):
            out[f"{key} (pubbrain5_anomaly_{disease})"] = float(v)
            collected[key].append(v)
    for key, v in collected.items():
        out[f"{key} (pubbrain5_anomaly)"] = float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")

    def grouped(name, y_idx, probs, onehot, class_names):
        pred = probs.argmax(1)
        out[f"auc (pubbrain5_{name})"] = m.multilabel_macro_auc(onehot, probs)
        out[f"weighted_f1 (pubbrain5_{name})"] = m.weighted_f1(y_idx, pred)
        out[f"balanced_acc (pubbrain5_{name})"] = m.balanced_accuracy(y_idx, pred)
        for i, cname in enumerate(class_names):
            yb = (y_idx == i).astype(int)
            values = _three(yb, (probs[:, i] >= 0.5).astype(int), probs[:, i])
            for key, v in zip(("auc", "weighted_f1", "balanced_acc"), values):
                out[f"{key} (pubbrain5_{name}_{cname})"] = float(v)

    tumour = [2, 3, 4]
    mask = t[:, tumour].sum(1) == 1.0
    if mask.any():
        y_t = t[mask][:, tumour].argmax(1)
        grouped("tumor", y_t, _softmax(scores[mask][:, tumour]), np.eye(3, dtype=int)[y_t],
                ["glioma", "meningioma", "metastasis"])
    grouped("disease", t.argmax(1), _softmax(scores), t.astype(int),
            ["normal", "stroke", "glioma", "meningioma", "metastasis"])
    return out


METRIC_SETS = {"threshold-paper": threshold_paper, "threshold": threshold, "multilabel-auc": multilabel_auc,
               "mean-auc-present": mean_auc_present, "ovr-auc": ovr_auc, "classes": classes, "pubbrain5-paper": pubbrain5_paper,
               "pubbrain5": pubbrain5}


def compute(protocol, targets, scores, ids, preds=None) -> dict:
    if protocol.metrics not in METRIC_SETS:
        raise ValueError(f"protocol {protocol.benchmark}/{protocol.resolved}: unknown metric set {protocol.metrics!r}")
    return METRIC_SETS[protocol.metrics](protocol, np.asarray(targets), np.asarray(scores, dtype=np.float64),
                                         list(ids), None if preds is None else np.asarray(preds))


def flatten(results: dict, prefix: str = "") -> dict[str, float]:
    """Nested results -> {"class / metric": value} (numbers only)."""
    flat: dict[str, float] = {}
    for k, v in results.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + " / "))
        elif isinstance(v, (int, float, np.floating)):
            flat[key] = float(v)
    return flat
