"""Training's evaluation: retrieval recall@k, and zero-shot through hlip_engine.evaluate (the code behind
`hlip evaluate`): official benchmarks with --eval, labelled held-out studies with --zeroshot-csv."""
import csv
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from hlip_engine.evaluate import evaluate as evaluate_benchmark
from hlip_engine.model import create_model
from training.evaluate import (
    BenchmarkSpec,
    evaluate,
    heldout_protocol,
    parse_eval_specs,
    read_labels,
    recall_at_k,
    roc_auc,
    zeroshot_metrics,
)

torch.set_num_threads(2)


def test_auc_equals_the_fraction_of_correctly_ordered_pairs():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    score = np.round(rng.random(40), 1)  # ties on purpose
    pairs = [(p, n) for p, n in itertools.product(score[y], score[~y])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(y, score) == pytest.approx(expected)
    assert np.isnan(roc_auc(np.ones(4, bool), np.arange(4.0)))


def test_recall_at_k():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # studies 2 and 3 have each other's report on top
    r = recall_at_k(image, F.normalize(text + 0.1, dim=1), ks=(1, 2))
    assert r["study_to_report_R@1"] == 0.5 and r["report_to_study_R@1"] == 0.5


def test_eval_specs_parse_and_fail_clearly():
    specs = parse_eval_specs(["ct-rate=/data/ct_rate:/meta/valid_labels.csv", "demo=/lib"])
    assert specs == [BenchmarkSpec("ct-rate", "/data/ct_rate", "/meta/valid_labels.csv"),
                     BenchmarkSpec("demo", "/lib", None)]
    with pytest.raises(ValueError, match="unknown benchmark 'brain'"):
        parse_eval_specs(["brain=/x:/y.csv"])
    with pytest.raises(ValueError, match="give the labels CSV as rsna=ROOT:LABELS.csv"):
        parse_eval_specs(["rsna=/x"])


def test_ct_rate_prompt_set_takes_the_official_prompts_and_its_labels_file_is_named(tmp_path):
    proto = heldout_protocol("ct-rate")
    prompts = dict(zip(proto.names, proto.prompts))
    assert prompts["Lung nodule"] == ("Not lung nodule", "Lung nodule") and len(proto.names) == 16
    assert proto.templates == ("The volume shows: {}.",) and proto.metrics == "threshold"
    official = tmp_path / "valid_labels.csv"
    official.write_text("VolumeName,Emphysema\nvalid_1_a_1.nii.gz,0\n")
    with pytest.raises(ValueError, match=r"official ct-rate labels file: use --eval ct-rate=ROOT:"):
        read_labels(official, "study_id", None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    return m


def test_heldout_zeroshot_scores_as_the_official_binary_evaluation(model):
    proto = heldout_protocol(prompts=["mass=No mass.|Mass in the frontal lobe.", "bleed=No bleed.|Bleed."])
    image = F.normalize(torch.randn(8, 64), dim=-1)
    labels = {"mass": ["0", "1", "0", "1", "1", "0", "0", "1"], "bleed": ["1", "0", "0", "1", "0", "0", "1", "1"]}
    out = zeroshot_metrics(model, image, labels, proto, [str(i) for i in range(8)])
    with torch.no_grad():
        neg, pos = F.normalize(model.encode_text(["No mass.", "Mass in the frontal lobe."]).float(), dim=-1)
    prob = (np.exp(2.0) * torch.stack([image @ neg, image @ pos], 1)).softmax(1)[:, 1].numpy()
    y = [int(v) for v in labels["mass"]]
    assert out["zeroshot auc (zeroshot_mass)"] == pytest.approx(roc_auc_score(y, prob), abs=1e-6)
    assert out["zeroshot_macro_auc"] == pytest.approx(out["zeroshot auc (zeroshot)"])
    assert {"zeroshot acc (zeroshot)", "zeroshot weighted_f1 (zeroshot)", "zeroshot recall (zeroshot)",
            "zeroshot precision (zeroshot)"} <= set(out)
    classes = heldout_protocol(prompts=["glioma=Glioma.", "normal=Normal brain.", "stroke=Acute stroke."])
    out = zeroshot_metrics(model, image, {"label": ["glioma", "normal", "stroke", "stroke"] * 2}, classes,
                           [str(i) for i in range(8)])
    assert 0 <= out["zeroshot balanced acc"] <= 1 and out["zeroshot_macro_auc"] == out["zeroshot mean auc"]


class _Heldout:
    """Two studies of the training data, by id."""

    def __len__(self):
        return 2

    def study_id(self, i):
        return ["s0", "s1"][i]

    def __getitem__(self, i):
        torch.manual_seed(i)
        return torch.randn(1, 1, 16, 32, 32), f"report {i}", None


def test_training_evaluation_runs_the_official_benchmark_and_checks_ids(model, tmp_path):
    import contextlib

    root = tmp_path / "rsna"
    rng = np.random.default_rng(0)
    heads = ["Any", "Epidural", "Intraparenchymal", "Intraventricular", "Subarachnoid", "Subdural"]
    rows = []
    for i in range(4):
        d = root / f"RSNA_ID_{i}" / "1.2"
        d.mkdir(parents=True)
        torch.save(torch.from_numpy(rng.integers(0, 256, (16, 32, 32), dtype=np.uint8)), d / "s.pt")
        rows.append([f"ID_{i}", *[(i + k) % 2 for k in range(6)]])
    labels = tmp_path / "rsna.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["study", *heads], *rows])
    specs = parse_eval_specs([f"rsna={root}:{labels}"])
    out = evaluate(model, _Heldout(), device=torch.device("cpu"), autocast=contextlib.nullcontext, ks=(1,),
                   benchmarks=specs, protocol="2026")
    direct = evaluate_benchmark("rsna", root, labels, model=model, protocol="2026", allow_text_tower=True,
                                progress=False)
    assert out["rsna auc (rsna)"] == pytest.approx(direct["metrics"]["auc (rsna)"]) and out["rsna cases"] == 4
    assert "study_to_report_R@1" in out and model.training is False
    zeroshot = (["s0", "s1", "s9", "s8"], {"mass": ["0", "1", "0", "1"]}, "", ["mass=No mass.|Mass."])
    with pytest.raises(ValueError, match=r"2 of 4 ids are studies of the evaluation data; unmatched: s9, s8"):
        evaluate(model, _Heldout(), device=torch.device("cpu"), autocast=contextlib.nullcontext, zeroshot=zeroshot)


def test_pretrain_options_take_benchmarks(capsys):
    from training.config import parse_config

    cfg = parse_config(["--synthetic", "--out", "o", "--eval", "rsna=/d:/l.csv", "--eval", "demo=/lib",
                        "--eval-protocol", "2026"])
    assert cfg.eval == ["rsna=/d:/l.csv", "demo=/lib"] and cfg.eval_protocol == "2026"
    with pytest.raises(SystemExit):
        parse_config(["--synthetic", "--out", "o", "--eval", "cq500=/d"])
    assert "give the labels CSV as cq500=ROOT:LABELS.csv" in capsys.readouterr().err
