"""`hlip evaluate` end to end on tiny fixtures in the official layouts, with a real (tiny) model: the
numbers equal the official evaluation restated here step by step (its loading, normalisation, classifier,
scores and scikit-learn metrics); bad input is reported, outputs are written, embeddings are cached."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from hlip_engine.cli import main
from hlip_engine.evaluate import evaluate, get_protocol
from hlip_engine.model import create_model, load_model

torch.set_num_threads(2)
MEAN, STD = float(np.mean([0.485, 0.456, 0.406])), float(np.mean([0.229, 0.224, 0.225]))  # timm's, averaged
RSNA6 = ["Any", "Epidural", "Intraparenchymal", "Intraventricular", "Subarachnoid", "Subdural"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.5)
    return m.save(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, device="cpu")


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    """RSNA_<study>/<series>/*.pt uint8 scans; study 2 has two series (two cases)."""
    root = tmp_path_factory.mktemp("rsna")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        sid = f"ID_{i:03d}"
        for s in range(2 if i == 2 else 1):
            d = root / f"RSNA_{sid}" / f"1.2.3.{s}"
            d.mkdir(parents=True)
            for k in range(2):
                torch.save(torch.from_numpy(rng.integers(0, 256, (16, 32, 32), dtype=np.uint8)), d / f"s{k}.pt")
        rows.append([sid, *[(i + k) % 2 for k in range(6)]])
    return root, _write_csv(root.parent / "rsna_labels.csv", ["study", *RSNA6], rows)


def official_rsna_images(model, root, labels_csv):
    """The official RSNA dataset restated: every non-empty series folder of RSNA_<study> a case, its scans
    /255 and normalised, one forward per case. -> (embeddings [C, E], the rows' label dicts per case)."""
    embeddings, rows = [], []
    with torch.no_grad(), open(labels_csv) as f:
        for row in csv.DictReader(f):
            for series in sorted((root / f"RSNA_{row['study']}").iterdir()):
                scans = [(torch.load(p, weights_only=True).float() / 255.0 - MEAN) / STD
                         for p in sorted(series.iterdir())]
                embeddings.append(model.encode_image(torch.stack([s[None] for s in scans])[None])[0])
                rows.append(row)
    return torch.stack(embeddings), rows


def official_rsna(model, images, rows, protocol):
    """The official RSNA scoring restated: class vectors averaged over templates, cosine scores,
    roc_auc_score per class."""
    p = get_protocol("rsna", protocol)
    with torch.no_grad():
        weights = []
        for c in p.prompts:
            e = F.normalize(model.encode_text([t.format(c) for t in p.templates]).float(), dim=-1).mean(0)
            weights.append(e / e.norm())
        s = (images @ torch.stack(weights, 1)).numpy()
    t = np.array([[int(r[c]) for c in p.labels] for r in rows])
    return {f"auc ({n})": roc_auc_score(t[:, k], s[:, k]) for k, n in enumerate(p.names)}, len(t)


def test_cli_rsna_equals_the_official_evaluation_and_caches(rsna, ckpt, model, tmp_path, capsys):
    root, labels = rsna
    out = tmp_path / "run"
    args = ["evaluate", "rsna", "--data", str(root), "--labels", str(labels), "--model", str(ckpt), "--device",
            "cpu", "--allow-text-tower", "--out", str(out), "--json", "--no-progress", "--bootstrap", "10"]
    assert main([*args, "--protocol", "2026"]) == 0
    result = json.loads(capsys.readouterr().out)
    images, case_rows = official_rsna_images(model, root, labels)
    expected, cases = official_rsna(model, images, case_rows, "2026")
    assert result["protocol"] == "2026" and result["cases"] == cases == 5 and result["skipped"] == []
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert result["metrics"]["auc (rsna)"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    assert set(result["ci"]) == set(result["metrics"]) and result["cache"]["misses"] == 5
    with open(out / "scores.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == ["RSNA_ID_000/1.2.3.0", "RSNA_ID_001/1.2.3.0", "RSNA_ID_002/1.2.3.0",
                                          "RSNA_ID_002/1.2.3.1", "RSNA_ID_003/1.2.3.0"]
    assert len(list((out / "roc").glob("roc_*.png"))) == 6
    assert json.loads((out / "results.json").read_text())["protocol_source"].startswith("github Zch0414/hlip")
    # another protocol: the same embeddings, not one study encoded again
    assert main([*args, "--protocol", "paper"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert paper["cache"] == {**paper["cache"], "hits": 5, "misses": 0}
    expected, _ = official_rsna(model, images, case_rows, "paper")
    assert paper["metrics"]["auc (Subdural hemorrhage)"] == pytest.approx(expected["auc (Subdural hemorrhage)"],
                                                                         abs=1e-6)
    assert "auc (rsna)" in paper["metrics"] and "auc (epidural hemorrhage)" not in paper["metrics"]


def test_text_tower_of_another_protocol_is_refused(rsna, ckpt, capsys):
    root, labels = rsna
    assert main(["evaluate", "rsna", "--data", str(root), "--labels", str(labels), "--model", str(ckpt),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "text tower all-MiniLM-L6-v2 is not the tokenizer of the official rsna protocol" in err
    assert err.count("\n") == 1


def test_labels_matching_no_or_some_studies_is_an_error_naming_them(rsna, model, tmp_path):
    root, _ = rsna
    none = _write_csv(tmp_path / "none.csv", ["study", *RSNA6], [[f"ID_9{i}", 0, 0, 0, 0, 0, 0] for i in range(5)])
    with pytest.raises(ValueError, match=r"0 of 5 ids in column 'study' match rsna data .* unmatched: ID_90, "
                                         r"ID_91, ID_92 \.\.\."):
        evaluate("rsna", root, none, model=model, protocol="2026", allow_text_tower=True, progress=False)
    some = _write_csv(tmp_path / "some.csv", ["study", *RSNA6],
                      [["ID_000", 1, 0, 1, 0, 1, 0], ["ID_001", 0, 1, 0, 1, 0, 1], ["ID_77", 0, 0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"2 of 3 ids .* unmatched: ID_77 \(--allow-missing"):
        evaluate("rsna", root, some, model=model, protocol="2026", allow_text_tower=True, progress=False)
    result = evaluate("rsna", root, some, model=model, protocol="2026", allow_text_tower=True, progress=False,
                      allow_missing=True)
    assert result["cases"] == 2 and result["unmatched"] == ["ID_77"]
    bad = _write_csv(tmp_path / "bad.csv", ["study", "Any"], [["ID_000", 1]])
    with pytest.raises(ValueError, match=r"bad.csv: columns \['Epidural'"):
        evaluate("rsna", root, bad, model=model, protocol="2026", allow_text_tower=True)


def test_unreadable_study_is_skipped_and_single_valued_class_gives_nan(rsna, model, tmp_path):
    import shutil

    root = tmp_path / "rsna"
    shutil.copytree(rsna[0], root)
    (root / "RSNA_ID_003" / "1.2.3.0" / "s0.pt").write_bytes(b"not a tensor")
    rows = [[f"ID_{i:03d}", 1 if i < 2 else 0, 0, i % 2, (i + 1) % 2, i % 2, (i + 1) % 2] for i in range(4)]
    labels = _write_csv(tmp_path / "labels.csv", ["study", *RSNA6], rows)
    with pytest.warns(UserWarning, match="class 'epidural hemorrhage': one label value"):
        result = evaluate("rsna", root, labels, model=model, protocol="2026", allow_text_tower=True,
                          progress=False)
    assert result["cases"] == 4 and len(result["skipped"]) == 1
    case, why = result["skipped"][0]
    assert case == "RSNA_ID_003/1.2.3.0" and "not a readable tensor file" in why
    assert math.isnan(result["metrics"]["auc (epidural hemorrhage)"]) and math.isnan(result["metrics"]["auc (rsna)"])
    assert not math.isnan(result["metrics"]["auc (intracranial hemorrhage)"])


def _official_ct(path, target, lo=-1150.0, hi=350.0):
    """The official CT-RATE dataset steps: window, pad to the target (centred), centre-crop, normalise."""
    img = torch.clip((torch.load(path, weights_only=True) - lo) / (hi - lo), 0.0, 1.0)[None].float()
    _, d, h, w = img.shape
    pads = [max(t - n, 0) for t, n in zip(target, (d, h, w))]
    img = F.pad(img[None], (pads[2] // 2, pads[2] - pads[2] // 2, pads[1] // 2, pads[1] - pads[1] // 2,
                            pads[0] // 2, pads[0] - pads[0] // 2))[0]
    _, d, h, w = img.shape
    sd, sh, sw = (d - target[0]) // 2, (h - target[1]) // 2, (w - target[2]) // 2
    img = img[:, sd:sd + target[0], sh:sh + target[1], sw:sw + target[2]]
    return ((img - MEAN) / STD)[None, None]  # [study, scan, 1, D, H, W]


def test_ct_rate_paper_scores_every_volume_as_the_official_script(model, tmp_path):
    proto = get_protocol("ct-rate", "paper")
    root = tmp_path / "ct_rate"
    rng = np.random.default_rng(1)
    rows, paths = [], []
    for i, (study, recon) in enumerate([(1, "a_1"), (1, "a_2"), (2, "a_1"), (3, "b_1"), (4, "a_1"), (5, "a_1")]):
        name = f"valid_{study}_{recon}"
        folder = root / "valid" / f"valid_{study}" / f"valid_{study}_{recon.split('_')[0]}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = [(10, 28, 36), (20, 40, 30)][i % 2]
        torch.save(torch.from_numpy(rng.normal(-500, 400, shape).astype(np.float32)), folder / f"{name}.pt")
        paths.append(folder / f"{name}.pt")
        rows.append([f"{name}.nii.gz", *[(i + k) % 2 for k in range(len(proto.labels))]])
    labels = _write_csv(tmp_path / "valid_labels.csv", ["VolumeName", *proto.labels], rows)
    result = evaluate("ct-rate", root, labels, model=model, protocol="paper", allow_text_tower=True, progress=False)
    assert result["cases"] == 6  # every reconstruction, two of them of study 1
    with torch.no_grad():
        emb = torch.cat([model.encode_image(_official_ct(p, [16, 32, 32])) for p in paths])
        scale = float(model.logit_scale.exp())
        k = proto.names.index("Lung nodule")
        neg, pos = (F.normalize(model.encode_text([f"The volume shows: {t}."]).float(), dim=-1)[0]
                    for t in ("Not lung nodule", "Lung nodule"))
        prob = (scale * torch.stack([emb @ neg, emb @ pos], 1)).softmax(1)[:, 1].numpy()
    y = np.array([r[1 + k] for r in rows])
    assert result["metrics"]["Lung nodule"]["auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-6)
    assert "mean auc" in result["metrics"]["* mean"] and "16 labels" in get_protocol("ct-rate").about
    assert result["deviations"] == ["the model's text tower all-MiniLM-L6-v2 is not the tokenizer of the official "
                                    "ct-rate protocol (microsoft/BiomedVLP-CXR-BERT-specialized)",
                                    "input grid [16, 32, 32] (the model's) instead of the official [112, 336, 336]"]


def test_pub_brain_5_2026_preprocessing_as_the_official_dataset(model, tmp_path):
    root = tmp_path / "pub_brain_5"
    rng = np.random.default_rng(2)
    rows, studies = [], []
    for i, kind in enumerate(["open_bhb/sub-1", "stroke/sub-2", "brats23/train/adult_glioma/g", "nyu_mets/N_1",
                              "brats23/test/adult_meningioma/m", "open_bhb/sub-3"]):
        folder = root / kind
        folder.mkdir(parents=True)
        for k in range(2):
            torch.save(torch.from_numpy(rng.integers(0, 256, (20, 30, 24), dtype=np.uint8)), folder / f"t{k}.pt")
        rows.append([kind, *np.eye(5, dtype=int)[[0, 1, 2, 4, 3, 0][i]]])
        studies.append(folder)
    labels = _write_csv(tmp_path / "pub.csv", ["study", "Normal", "Stroke", "Glioma", "Meningioma", "Metastasis"], rows)
    result = evaluate("pub-brain-5", root, labels, model=model, protocol="2026", allow_text_tower=True,
                      progress=False, out=tmp_path / "out")
    size, crop = 40, 32  # the tiny model's grid (the official model's: 256, 224)
    with torch.no_grad():
        embs = []
        for folder in studies:
            scans = []
            for f in sorted(folder.iterdir()):
                img = torch.load(f, weights_only=True).float() / 255.0
                _, h, w = img.shape
                side = max(h, w)
                img = F.pad(img, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
                img = F.interpolate(img[None], size=(size, size), mode="bilinear")[0]
                img = F.interpolate(img[None, None], size=(48, size, size), mode="nearest-exact")[0, 0]
                c0 = (size - crop) // 2
                scans.append(((img[:, c0:c0 + crop, c0:c0 + crop] - MEAN) / STD)[None])
            embs.append(model.encode_image(torch.stack(scans)[None])[0])
        proto = get_protocol("pub-brain-5", "2026")
        w = torch.stack([F.normalize(model.encode_text([f"This MRI study shows: {p}."]).float(), dim=-1)[0]
                         for p in proto.prompts], 1)
        logits = (float(model.logit_scale.exp()) * torch.stack(embs) @ w).numpy()
    with open(tmp_path / "out" / "scores.csv") as f:
        got = np.array([[float(r[f"score: {n}"]) for n in proto.names] for r in csv.DictReader(f)])
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
    t = np.array([r[1:] for r in rows])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert result["metrics"]["auc (pubbrain5_disease_normal)"] == pytest.approx(roc_auc_score(t[:, 0], probs[:, 0]))
    assert result["input"] == {"kind": "square-resize", "scale": 255, "slices": 48, "size": 40, "crop": 32}
