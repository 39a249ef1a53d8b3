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


def _head_ct(fov_mm: float = 180.0, description: str = "CT HEAD"):
    from hlip_engine.study import Study

    zz, yy, xx = np.mgrid[:8, :20, :20]
    head = (((yy - 10) ** 2 + (xx - 10) ** 2) < 81) * 40.0
    scan = Scan(head.astype(np.float32), np.diag([fov_mm / 20, fov_mm / 20, 5.0, 1.0]), modality="CT",
                description="HEAD")
    return Study(uid="1.2.3", scans=[scan], description=description, date="20240102", modality="CT")


def test_default_prompt_set_follows_the_model_then_the_study():
    from hlip_engine.demo.quality import FINDING_PROMPTS, TEMPLATES
    from hlip_engine.model.factory import get_config
    from hlip_engine.study import Study
    from hlip_engine.zeroshot import classifier_request, default_prompt_set, resolve_prompt_set

    mr = Study(uid="1.2.4", scans=[Scan(np.zeros((4, 8, 8), np.float32), np.eye(4), modality="MR")],
               modality="MR")
    for config in (get_config("hlip_demo"), {"name": "hlip_demo"}):  # a checkpoint saved before the block
        name, spec, why = default_prompt_set(config, mr)
        assert name == "hlip-demo-5" and "own" in why
        assert spec["classes"] == FINDING_PROMPTS and spec["templates"] == TEMPLATES
    tiny = get_config("hlip_tiny")
    name, spec, why = default_prompt_set(tiny, _head_ct())
    assert (name, why) == ("head-ct-hemorrhage", "a CT study") and all("CT" in t for t in spec["templates"])
    assert default_prompt_set(tiny, _head_ct(fov_mm=400.0, description="CT CHEST"))[0] == "ct-rate"
    name, spec, why = default_prompt_set(tiny, mr)
    assert (name, why) == ("pub-brain-5", "an MR study") and spec == resolve_prompt_set("pub-brain-5")
    assert default_prompt_set(tiny)[0] == "pub-brain-5"  # no study yet
    name, spec, _ = default_prompt_set({**tiny, "zeroshot": {"prompt_set": "ct-rate", "template": "A CT: {}."}}, mr)
    assert name == "ct-rate" and spec["templates"] == ["A CT: {}."]
    # what the reader named wins; nothing named is the default, with the reason
    assert classifier_request(tiny, mr, prompt_set="rad-chestct")[1:] == ("rad-chestct", "")
    assert classifier_request(tiny, mr, prompts=["a", "b"])[1:] == (None, "")
    request, name, why = classifier_request(tiny, _head_ct(), templates=["Head CT: {}."])
    assert name == "head-ct-hemorrhage" and why == "a CT study" and request["templates"] == ["Head CT: {}."]
    assert request["prompt_set"] == resolve_prompt_set("head-ct-hemorrhage")
    with pytest.raises(ValueError, match="not both"):
        classifier_request(tiny, mr, prompt_set="pub-brain-5", prompts=["a", "b"])


def test_cli_zeroshot_without_prompts_uses_the_model_default(dicom_study, model, tmp_path, capsys):
    from hlip_engine.zeroshot import zeroshot_document

    ckpt = model.save(tmp_path / "tiny.safetensors")
    assert main(["zeroshot", str(dicom_study), "--model", str(ckpt), "--json", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt_set"] == "pub-brain-5" and doc["default_because"] == "an MR study"  # an MR study
    assert list(doc["probabilities"]) == ["Normal", "Stroke", "Glioma", "Meningioma", "Metastasis"]
    loaded = load_model(ckpt, device="cpu")
    study = load_study(dicom_study)
    embedding = loaded.encode_study(study)
    same = zeroshot_document(loaded, study, embedding)  # the engine's document, as the server and plugin give it
    assert set(same) == set(doc) and same["study"] == doc["study"] == "1.2.826.0.1.3680043.8.498.1"
    assert list(same["probabilities"].values()) == pytest.approx(list(doc["probabilities"].values()), abs=1e-5)
    named = zeroshot_document(loaded, study, embedding, prompt_set="pub-brain-5")
    assert named["prompt_set"] == "pub-brain-5" and "default_because" not in named
    assert named["probabilities"] == pytest.approx(same["probabilities"], abs=1e-6)
    assert main(["zeroshot", str(dicom_study), "--model", str(ckpt), "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "prompt set pub-brain-5 (an MR study" in out.err and "Glioma" in out.out
