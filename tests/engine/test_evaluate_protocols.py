"""The protocols are the official ones: classes, prompts and templates restated from the official
metadata files, and class vectors built as open_clip's build_zero_shot_classifier builds them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hlip_engine.evaluate import benchmarks, get_protocol
from hlip_engine.evaluate.scoring import protocol_classifier, protocol_scores
from hlip_engine.model import create_model

TEMPLATES_2026 = ["This study shows: {}.", "This study shows: {} identified.", "This study shows: {} noted.",
                  "This study shows: {} seen.", "This study shows: new {}.", "This study shows: known {}.",
                  "This study shows: prominent {}.", "This study shows: likely {}.", "This study shows: possibly {}.",
                  "This study shows: indicating {}.", "This study shows: reflecting {}.",
                  "This study shows: representing {}.", "This study shows: suggesting {}.",
                  "This study shows: indicative of {}.", "This study shows: suggestive of {}.",
                  "This study shows: related to {}.", "This study shows: consistent with {}.",
                  "This study shows: compatible with {}."]


def test_every_benchmark_has_both_protocols():
    assert set(benchmarks()) == {"ct-rate", "rad-chestct", "pub-brain-5", "rsna", "cq500", "mr-rate", "demo"}
    for name in benchmarks():
        for version in ("paper", "2026"):
            p = get_protocol(name, version)
            assert p.version == version and p.source and len(p.labels) == len(p.names) == len(p.prompts)
    assert get_protocol("cq500", "paper").resolved == "2026"  # one official CQ500 protocol
    with pytest.raises(ValueError, match="unknown benchmark 'brats'"):
        get_protocol("brats")
    with pytest.raises(ValueError, match="unknown protocol '2024'"):
        get_protocol("rsna", "2024")


def test_ct_rate_protocols_restate_the_official_prompts():
    paper = get_protocol("ct-rate", "paper")
    prompts = dict(zip(paper.names, paper.prompts))
    # the volume template replaces the organ set's "Nodule" / "Opacity" with the full names
    assert prompts["Lung nodule"] == ("Not lung nodule", "Lung nodule")
    assert prompts["Lung opacity"] == ("Not lung opacity", "Lung opacity")
    assert prompts["Atelectasis"] == ("Not atelectatic", "Atelectasis")
    assert prompts["Coronary artery wall calcification"] == ("Not coronary artery wall calcification",
                                                             "Coronary artery wall calcification")
    assert paper.templates == ("The volume shows: {}.",) and paper.score == "pair-softmax" and len(paper.names) == 16
    assert paper.id_column == "VolumeName" and paper.metrics == "threshold-paper"
    now = get_protocol("ct-rate", "2026")
    assert now.prompts == now.names and now.score == "cosine"
    assert now.templates == ("This study shows: there is {}.", "This study shows: {} is observed.",
                             "This study shows: {} is present.", "This study shows: onsistent with {}.",
                             "This study shows: compatible with {}.")  # the official typo kept
    rad = get_protocol("rad-chestct", "paper")
    assert "Mosaic attenuation pattern" not in rad.names and len(rad.names) == 15
    assert rad.merge["name"] == "Calcification"


def test_head_ct_and_mri_protocols_restate_the_official_metadata():
    rsna = get_protocol("rsna", "2026")
    assert rsna.labels == ("Any", "Epidural", "Intraparenchymal", "Intraventricular", "Subarachnoid", "Subdural")
    assert rsna.prompts[0] == "intracranial hemorrhage" and list(rsna.templates) == TEMPLATES_2026
    old = get_protocol("rsna", "paper")
    assert old.templates == ("This CT study shows: {}.",) and "Epidural" not in old.labels
    cq = get_protocol("cq500", "2026")
    assert cq.labels[:6] == ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH") and cq.names[4] == "extradural hemorrhage"
    assert cq.names[-3:] == ("skull fracture", "mass effect", "midline shift") and cq.prefix == "cq500"
    mr = get_protocol("mr-rate", "2026")
    assert len(mr.names) == 37 and mr.names[0] == "Cerebral infarction" and mr.names[-1] == "Pituitary adenoma"
    assert mr.id_column == "study_uid" and list(mr.templates) == TEMPLATES_2026
    for version, slices, scale in (("paper", 144, 1), ("2026", 48, 255)):
        pb = get_protocol("pub-brain-5", version)
        assert pb.prompts == ("No significant abnormalities", "Acute stroke", "Glioma", "Meningioma", "Metastasis")
        assert pb.templates == ("This MRI study shows: {}.",) and pb.input["slices"] == slices
        assert pb.input["scale"] == scale and pb.score == "scaled-logits"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.5)
    return m


def _unit(model, texts):
    with torch.no_grad():
        return F.normalize(model.encode_text(texts).float(), dim=-1)


def test_class_vectors_and_scores_follow_build_zero_shot_classifier(model):
    proto = get_protocol("cq500", "2026")
    clf = protocol_classifier(model, proto)
    # open_clip: per class, every template filled, encoded, normalised, averaged, normalised again
    for k in (0, 8):
        texts = [t.format(proto.prompts[k]) for t in proto.templates]
        expected = F.normalize(_unit(model, texts).mean(0), dim=-1)
        torch.testing.assert_close(clf.weights[k], expected, atol=1e-5, rtol=1e-4)
    emb = F.normalize(torch.randn(3, 64), dim=-1)
    cosine, _ = protocol_scores(clf, emb, "cosine")
    np.testing.assert_allclose(cosine, (emb @ clf.weights.T).numpy(), atol=1e-6)
    pair = protocol_classifier(model, get_protocol("ct-rate", "paper"))
    neg = _unit(model, ["The volume shows: Not lung nodule."])[0]
    pos = _unit(model, ["The volume shows: Lung nodule."])[0]
    probs, preds = protocol_scores(pair, emb, "pair-softmax")
    logits = np.exp(2.5) * torch.stack([emb @ neg, emb @ pos], 1)
    np.testing.assert_allclose(probs[:, 2], logits.softmax(1)[:, 1].numpy(), atol=1e-5)
    assert (preds[:, 2] == logits.argmax(1).numpy()).all()
