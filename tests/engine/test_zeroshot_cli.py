"""Zero-shot classifiers (softmax and binary, template averaging), the bar chart, and the `hlip embed` /
`hlip zeroshot` commands on a real DICOM study written with pydicom."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hlip_engine.cli import main
from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.model import create_model, load_model
from hlip_engine.study import Scan
from hlip_engine.zeroshot import bar_chart, build_classifier, prompt_set_names, text_bars

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    return m


def unit(texts, model):
    with torch.no_grad():
        return F.normalize(model.encode_text(texts), dim=-1)


def test_softmax_classifier_averages_templates_per_class(model):
    prompts = {"tumour": ["glioma", "meningioma"], "normal": "no abnormality"}
    templates = ["This MRI study shows: {}.", "Findings: {}."]
    clf = build_classifier(model, prompts=prompts, templates=templates)
    assert clf.names == ["tumour", "normal"] and clf.mode == "softmax"
    tumour = unit(["This MRI study shows: glioma.", "Findings: glioma.",
                   "This MRI study shows: meningioma.", "Findings: meningioma."], model).mean(0)
    normal = unit(["This MRI study shows: no abnormality.", "Findings: no abnormality."], model).mean(0)
    expected_w = F.normalize(torch.stack([tumour, normal]), dim=-1)
    torch.testing.assert_close(clf.weights, expected_w, atol=1e-6, rtol=1e-5)
    emb = F.normalize(torch.randn(3, 64), dim=-1)
    probs = clf.probabilities(emb)
    torch.testing.assert_close(probs, (np.exp(2.0) * emb @ expected_w.T).softmax(-1), atol=1e-6, rtol=1e-5)
    one = clf.classify(emb[0])
    assert list(one) == ["tumour", "normal"] and sum(one.values()) == pytest.approx(1.0)


def test_binary_prompt_set_gives_p_positive_per_class(model):
    clf = build_classifier(model, prompt_set="head-ct-hemorrhage")
    assert clf.mode == "binary" and clf.names[0] == "Any hemorrhage" and clf.weights.shape == (6, 2, 64)
    emb = F.normalize(torch.randn(64), dim=-1)
    neg = unit(["This CT study shows: No intracranial hemorrhage."], model)[0]
    pos = unit(["This CT study shows: Intracranial hemorrhage."], model)[0]
    expected = torch.sigmoid(np.exp(2.0) * (emb @ pos - emb @ neg))
    assert clf.classify(emb)["Any hemorrhage"] == pytest.approx(float(expected), abs=1e-5)
    ct = build_classifier(model, prompt_set="rad-chestct", template_set="organ")
    assert "Mosaic attenuation pattern" not in ct.names and "Cardiomegaly" in ct.names
    assert set(prompt_set_names()) >= {"pub-brain-5", "ct-rate", "rad-chestct", "head-ct-hemorrhage"}


def test_zeroshot_input_errors(model):
    with pytest.raises(ValueError, match="unknown prompt set 'brain-9'"):
        build_classifier(model, prompt_set="brain-9")
    with pytest.raises(ValueError, match="exactly one of"):
        build_classifier(model)
    with pytest.raises(ValueError, match="two or more prompts"):
        build_classifier(model, prompts=["glioma"])
    with pytest.raises(ValueError, match=r"needs \(negative, positive\)"):
        build_classifier(model, prompts={"bleed": ["only one"]}, mode="binary")
    clf = build_classifier(model, prompts=["a", "b"])
    with pytest.raises(ValueError, match="embedding size 32 does not match"):
        clf.probabilities(torch.zeros(32))


def test_bar_chart_and_text_bars(tmp_path):
    probs = {"Normal": 0.1, "Glioma": 0.7, "Stroke": 0.2}
    path = bar_chart(probs, tmp_path / "out" / "p.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    lines = text_bars(probs, width=10).splitlines()
    assert lines[1].startswith("Glioma") and lines[1].endswith("#######...")


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:20, :48, :40]
    for number, (desc, spacing) in enumerate([("T1 AX", 3.0), ("FLAIR AX", 4.0)], start=1):
        head = ((yy - 24) ** 2 / 400 + (xx - 20) ** 2 / 300 + (zz - 10) ** 2 / 90 < 1) * 800.0
        voxels = (head + rng.normal(0, 30, head.shape)).clip(0).astype(np.float32)
        affine = np.diag([0.9, 0.9, spacing, 1.0])
        scan = Scan(voxels, affine, modality="MR", description=desc)
        write_dicom_series(scan, root / f"series{number}", study_uid="1.2.826.0.1.3680043.8.498.1",
                           series_number=number, study_description="MRI BRAIN")
    return root


def test_cli_embed_and_zeroshot_on_a_dicom_study(dicom_study, model, tmp_path, capsys):
    ckpt = model.save(tmp_path / "tiny.safetensors")
    out = tmp_path / "emb.npy"
    assert main(["embed", str(dicom_study), "--model", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    vec = np.load(out)
    loaded = load_model(ckpt, device="cpu")
    expected = loaded.encode_study(load_study(dicom_study))
    assert vec.shape == (64,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(vec, expected.numpy(), atol=1e-6)
    assert "2 model scans" in capsys.readouterr().out

    chart = tmp_path / "chart.png"
    assert main(["zeroshot", str(dicom_study), "--model", str(ckpt), "--prompt-set", "pub-brain-5",
                 "--json", "--chart", str(chart), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    probs = result["probabilities"]
    assert list(probs) == ["Normal", "Stroke", "Glioma", "Meningioma", "Metastasis"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and chart.stat().st_size > 0
    clf = build_classifier(loaded, prompt_set="pub-brain-5")
    assert list(clf.classify(expected).values()) == pytest.approx(list(probs.values()), abs=1e-5)

    assert main(["zeroshot", str(dicom_study), "--model", str(ckpt), "--prompts", "glioma", "stroke"]) == 0
    table = capsys.readouterr().out
    assert "softmax over classes" in table and "glioma" in table and "#" in table


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["embed", str(tmp_path), "--model", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hlip embed: error: checkpoint not found") and err.count("\n") == 1
