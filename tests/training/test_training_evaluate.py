"""Evaluation metrics: AUC, balanced accuracy, recall@k, and zero-shot scoring with the engine's classifier."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hlip_engine.zeroshot import Classifier
from training.evaluate import (
    balanced_accuracy,
    parse_free_prompts,
    read_labels,
    recall_at_k,
    roc_auc,
    zeroshot_metrics,
)


def test_auc_equals_the_fraction_of_correctly_ordered_pairs():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    score = np.round(rng.random(40), 1)  # ties on purpose
    pairs = [(p, n) for p, n in itertools.product(score[y], score[~y])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(y, score) == pytest.approx(expected)
    assert np.isnan(roc_auc(np.ones(4, bool), np.arange(4.0)))


def test_balanced_accuracy_weights_classes_equally():
    y = np.array([0] * 8 + [1] * 2)
    assert balanced_accuracy(y, np.zeros(10, int)) == 0.5  # plain accuracy would say 0.8
    assert balanced_accuracy(y, y) == 1.0


def test_recall_at_k():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # studies 2 and 3 have each other's report on top
    r = recall_at_k(image, F.normalize(text + 0.1, dim=1), ks=(1, 2))
    assert r["study_to_report_R@1"] == 0.5 and r["report_to_study_R@1"] == 0.5


def test_zeroshot_metrics_softmax_and_binary(tmp_path):
    names = ["normal", "glioma", "stroke"]
    weights = torch.eye(3, 8)
    image = F.normalize(torch.eye(3, 8)[[0, 1, 2, 2, 1]] + 0.05, dim=1)
    softmax = Classifier(names, "softmax", weights, 50.0)
    m = zeroshot_metrics(image, {"label": ["normal", "glioma", "stroke", "stroke", "glioma"]}, softmax)
    assert m["zeroshot_balanced_acc"] == 1.0 and m["zeroshot_macro_auc"] == 1.0
    m = zeroshot_metrics(image, {"label": ["glioma", "normal", "stroke", "stroke", "glioma"]}, softmax)
    assert m["zeroshot_balanced_acc"] == pytest.approx((0 + 0.5 + 1) / 3)
    binary = Classifier(["glioma"], "binary", torch.stack([torch.eye(3, 8)[[0, 1]]]), 50.0)
    m = zeroshot_metrics(image, {"glioma": ["0", "1", "0", "0", "1"]}, binary)
    assert m["zeroshot_macro_auc"] == 1.0 and m["zeroshot_balanced_acc"] == 1.0
    with pytest.raises(ValueError, match="have no prompt"):
        zeroshot_metrics(image, {"label": ["x"] * 5}, softmax)
    csv = tmp_path / "labels.csv"
    csv.write_text("study_id,glioma,stroke\nA,1,0\nB,0,1\n")
    ids, labels = read_labels(csv, "study_id", None)
    assert ids == ["A", "B"] and labels == {"glioma": ["1", "0"], "stroke": ["0", "1"]}
    with pytest.raises(ValueError, match="no id column 'uid'"):
        read_labels(csv, "uid", None)


def test_free_prompts():
    assert parse_free_prompts(["a=Alpha", "b=Beta"]) == ({"a": "Alpha", "b": "Beta"}, "softmax")
    assert parse_free_prompts(["a=No a|A"]) == ({"a": ("No a", "A")}, "binary")
    with pytest.raises(ValueError, match="mix"):
        parse_free_prompts(["a=A", "b=No b|B"])
