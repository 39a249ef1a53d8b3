"""The metric functions and official metric sets of hlip_engine.evaluate against the official
computations, restated here with scikit-learn (the library the official scripts call)."""
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from hlip_engine.evaluate import get_protocol, metrics
from hlip_engine.evaluate.bootstrap import bootstrap_ci
from hlip_engine.evaluate.metric_sets import compute, flatten


def official_find_threshold(y_true, y_score):
    """The official zeroshot_ct_rate.py threshold search, restated: 100 thresholds on [0, 1], distance of
    the ROC point to (0, 1) from the confusion matrix, '<=' keeps the later of equal ones."""
    best_threshold, best = 0, 10000
    for threshold in np.linspace(0, 1, 100):
        c = confusion_matrix(y_true, (y_score > threshold).astype(int))
        tp, tn, fp, fn = c[1, 1], c[0, 0], c[0, 1], c[1, 0]
        d = math.sqrt((1 - tp / (tp + fn)) ** 2 + (fp / (fp + tn)) ** 2)
        if d <= best:
            best, best_threshold = d, threshold
    return best_threshold


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_find_threshold_equals_the_official_search(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.3).astype(int)
    score = np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1)
    if seed == 3:
        score = np.round(score, 1)  # ties and many equally close thresholds
    assert metrics.find_threshold(y, score) == official_find_threshold(y, score)
    assert math.isnan(metrics.find_threshold(np.zeros(5, int), np.arange(5) / 5))


def test_binary_metrics_equal_sklearn():
    rng = np.random.default_rng(5)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        pred = rng.integers(0, 2, 30) if rng.random() < 0.8 else np.zeros(30, int)
        score = rng.random(30)
        assert metrics.accuracy(y, pred) == pytest.approx(accuracy_score(y, pred))
        assert metrics.balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
        assert metrics.weighted_f1(y, pred) == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0))
        assert metrics.recall(y, pred) == pytest.approx(recall_score(y, pred, zero_division=0))
        assert metrics.precision(y, pred) == pytest.approx(precision_score(y, pred, zero_division=0))
        assert metrics.auc(y, score) == pytest.approx(roc_auc_score(y, score))
    multi_true, multi_pred = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    assert metrics.weighted_f1(multi_true, multi_pred) == pytest.approx(
        f1_score(multi_true, multi_pred, average="weighted"))


def _scores(n, k, seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < 0.35).astype(int)
    targets[0], targets[1] = 1, 0  # every class holds both values
    scores = np.clip(rng.normal(0.45 + 0.2 * targets, 0.2), 0, 1)
    return targets, scores


def official_ctrate_2026(targets, scores, names, prefix):
    """compute_ctrate_metrics of the 2026 zeroshot_ctrate.py, restated."""
    out, col = {}, {"auc": [], "acc": [], "weighted_f1": [], "precision": [], "recall": []}
    for i, key in enumerate(names):
        y, s = targets[:, i], scores[:, i]
        pred = (s > official_find_threshold(y, s)).astype(int)
        values = {"auc": roc_auc_score(y, s), "acc": accuracy_score(y, pred),
                  "weighted_f1": f1_score(y, pred, average="weighted", zero_division=0),
                  "precision": precision_score(y, pred, zero_division=0),
                  "recall": recall_score(y, pred, zero_division=0)}
        for m, v in values.items():
            out[f"{m} ({prefix}_{key})"] = v
            col[m].append(v)
    out.update({f"{m} ({prefix})": float(np.nanmean(v)) for m, v in col.items()})
    return out


def test_ct_rate_2026_metric_set_equals_the_official_and_uses_its_names():
    proto = get_protocol("ct-rate", "2026")
    targets, scores = _scores(50, 16, 1)
    ours = compute(proto, targets, scores, [str(i) for i in range(50)])
    official = official_ctrate_2026(targets, scores, proto.names, "ctrate")
    assert list(ours) == list(official)
    for key in official:
        assert ours[key] == pytest.approx(official[key], abs=1e-12), key
    assert "auc (ctrate)" in ours and "weighted_f1 (ctrate_Lung nodule)" in ours


def test_rad_chestct_paper_merges_calcification_as_the_official_script():
    proto = get_protocol("rad-chestct", "paper")
    targets, scores = _scores(40, 15, 2)
    names = list(proto.names)
    a, b = names.index("Coronary artery wall calcification"), names.index("Arterial wall calcification")
    preds = (scores > 0.5).astype(int)
    ours = compute(proto, targets, scores, [str(i) for i in range(40)], preds)
    merged = [max(x, y) if x > 0.5 or y > 0.5 else min(x, y) for x, y in zip(scores[:, a], scores[:, b])]
    y = targets[:, a]
    assert ours["Calcification"]["auc"] == pytest.approx(roc_auc_score(y, merged))
    pred = (np.array(merged) > official_find_threshold(y, np.array(merged))).astype(int)
    assert ours["Calcification"]["* acc (balanced)"] == pytest.approx(accuracy_score(y, pred))  # plain accuracy
    merged_pred = [1 if p or q else 0 for p, q in zip(preds[:, a], preds[:, b])]
    assert ours["Calcification"]["acc (balanced)"] == pytest.approx(balanced_accuracy_score(y, merged_pred))
    assert list(ours)[-3:] == ["Calcification", "* mean"] or list(ours)[-1] == "* mean"
    assert set(ours["* mean"]) == {"mean auc", "* mean acc (balanced)", "* mean f1 (weighted)", "* mean recall",
                                   "* mean precision"}
    assert set(ours["mean"]) == {"mean acc (balanced)", "mean f1 (weighted)", "mean recall", "mean precision"}
    assert "Coronary artery wall calcification" not in ours and len([k for k in ours if "mean" not in k]) == 14
    aucs = [ours[n]["auc"] for n in ours if "mean" not in n]
    assert ours["* mean"]["mean auc"] == pytest.approx(np.mean(aucs))


def test_multilabel_auc_names_and_values_as_the_official_rsna_and_cq500_scripts():
    proto = get_protocol("rsna", "paper")
    targets, scores = _scores(30, 5, 3)
    ours = compute(proto, targets, scores, [str(i) for i in range(30)])
    assert list(ours) == ["auc (Intracranial hemorrhage)", "auc (Intraparenchymal hemorrhage)",
                          "auc (Intraventricular hemorrhage)", "auc (Subarachnoid hemorrhage)",
                          "auc (Subdural hemorrhage)", "auc (rsna)"]
    assert ours["auc (rsna)"] == pytest.approx(roc_auc_score(targets, scores, average="macro"))
    cq = get_protocol("cq500", "2026")
    t, s = _scores(30, 11, 4)
    t[:, 4] = 0  # no extradural hemorrhage in this sample: NaN, and so is the macro value
    out = compute(cq, t, s, [str(i) for i in range(30)])
    assert math.isnan(out["auc (extradural hemorrhage)"]) and math.isnan(out["auc (cq500)"])
    assert out["auc (skull fracture)"] == pytest.approx(roc_auc_score(t[:, 8], s[:, 8]))
    mr = get_protocol("mr-rate", "2026")
    t, s = _scores(30, 37, 5)
    t[:, 3] = 1
    present = [roc_auc_score(t[:, k], s[:, k]) for k in range(37) if k != 3]
    assert compute(mr, t, s, list(map(str, range(30)))) == {"auc (mri)": pytest.approx(np.mean(present))}


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _pubbrain_fixture():
    rng = np.random.default_rng(7)
    kinds = ["open_bhb/sub-1", "stroke/sub-2", "brats23/train/adult_glioma/a", "brats23/test/adult_meningioma/b",
             "nyu_mets/NYU_1", "ucsf_mets/U_2"]
    ids, rows = [], []
    for i in range(36):
        k = i % 6
        ids.append(f"/data/pub_brain_5/{kinds[k]}_{i}")
        rows.append(np.eye(5, dtype=int)[[0, 1, 2, 3, 4, 4][k]])
    targets = np.array(rows)
    logits = rng.normal(0, 1, (36, 5)) + 1.5 * targets
    return ids, targets, logits


def test_pub_brain_5_paper_tasks_as_the_official_script():
    proto = get_protocol("pub-brain-5", "paper")
    ids, targets, logits = _pubbrain_fixture()
    ours = compute(proto, targets, logits, ids)
    # stroke detection: studies whose path holds 'stroke' or 'open_bhb'; softmax over (normal, stroke)
    rows = [i for i, s in enumerate(ids) if "stroke" in s or "open_bhb" in s]
    p = _softmax(logits[rows][:, [0, 1]])
    y = targets[rows, 1]
    stroke = ours["Stroke Detection (2-way)"]
    assert stroke["Balanced Acc"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    assert stroke["Weghted F1"] == pytest.approx(f1_score(y, p.argmax(1), average="weighted"))  # official typo
    assert stroke["Macro AUC"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    rows = [i for i, s in enumerate(ids) if any(w in s for w in ("brats23", "nyu_mets", "ucsf_mets"))]
    p = _softmax(logits[rows][:, [2, 3, 4]])
    tumour = ours["Tumor Classification (3-way)"]
    assert tumour["Macro AUC"] == pytest.approx(roc_auc_score(targets[rows][:, 2:], p))
    assert tumour["Balanced Acc"] == pytest.approx(balanced_accuracy_score(targets[rows][:, 2:].argmax(1), p.argmax(1)))
    assert list(ours) == ["Stroke Detection (2-way)", "Glioma Detection (2-way)", "Meningioma Detection (2-way)",
                          "Metastasis Detection (2-way)", "Tumor Classification (3-way)",
                          "Disease Classification (5-way)"]
    assert ours["Disease Classification (5-way)"]["Macro AUC"] == pytest.approx(
        roc_auc_score(targets, _softmax(logits)))


def test_pub_brain_5_2026_masks_by_label_as_the_official_script():
    proto = get_protocol("pub-brain-5", "2026")
    ids, targets, logits = _pubbrain_fixture()
    ours = compute(proto, targets, logits, ids)
    mask = targets[:, 0] + targets[:, 4] == 1
    p = _softmax(logits[mask][:, [0, 4]])[:, 1]
    y = targets[mask, 4]
    assert ours["auc (pubbrain5_anomaly_metastasis)"] == pytest.approx(roc_auc_score(y, p))
    assert ours["balanced_acc (pubbrain5_anomaly_metastasis)"] == pytest.approx(
        balanced_accuracy_score(y, (p >= 0.5).astype(int)))
    probs = _softmax(logits)
    assert ours["auc (pubbrain5_disease)"] == pytest.approx(roc_auc_score(targets, probs, average="macro"))
    assert ours["weighted_f1 (pubbrain5_disease_stroke)"] == pytest.approx(
        f1_score(targets[:, 1], (probs[:, 1] >= 0.5).astype(int), average="weighted", zero_division=0))
    assert "balanced_acc (pubbrain5_tumor)" in ours and "auc (pubbrain5_anomaly)" in ours


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    proto = get_protocol("rsna", "2026")
    targets, scores = _scores(60, 6, 8)
    ids = [str(i) for i in range(60)]
    point = flatten(compute(proto, targets, scores, ids))
    a = bootstrap_ci(proto, targets, scores, ids, rounds=200, seed=1)
    assert a == bootstrap_ci(proto, targets, scores, ids, rounds=200, seed=1)
    assert a != bootstrap_ci(proto, targets, scores, ids, rounds=200, seed=2)
    for key, (low, high) in a.items():
        assert low <= point[key] <= high, key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bootstrap_ci(proto, targets[:5], scores[:5], ids[:5], rounds=20, seed=0)  # undefined AUCs stay quiet
