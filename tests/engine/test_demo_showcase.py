"""`hlip demo` end to end with the shipped demo model, on a small phantom library written as DICOM."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from hlip_engine.demo.quality import FINDING_PROMPTS
from hlip_engine.demo.showcase import DEMO_MODEL


def _not_blank(png: Path) -> bool:
    import matplotlib.image

    image = matplotlib.image.imread(png)
    return image.ndim == 3 and float(image[..., :3].std()) > 0.02


def test_demo_runs_headless_and_reports_quality(tmp_path):
    assert DEMO_MODEL.is_file() and DEMO_MODEL.stat().st_size <= 40 * 2**20, "the demo model ships, <= 40 MB"
    out = tmp_path / "demo"
    hlip = Path(sys.executable).parent / "hlip"
    run = subprocess.run([str(hlip), "demo", "--studies", "5", "--out", str(out), "--no-gui", "--evaluate"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "not for clinical use" in run.stdout
    results = json.loads((out / "demo_results.json").read_text())
    assert len(results["searches"]) == 3
    for hits in results["searches"].values():
        assert len(hits) == 5 and all(h["truth"] != "?" for h in hits)  # every hit is a library study
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert all(h["impression"].strip() for h in hits)  # the index is built with the library's reports
    probs = results["zeroshot"]["probabilities"]
    assert list(probs) == list(FINDING_PROMPTS) and abs(sum(probs.values()) - 1) < 1e-4
    assert _not_blank(out / "zeroshot.png") and _not_blank(out / "relevance.png")
    importance = np.array(results["relevance"]["scan_importance"])
    assert importance.min() >= 0 and abs(importance.sum() - 1) < 1e-4
    quality = results["quality"]
    assert quality["studies"] == 5
    assert all(0.0 <= v <= 1.0 for v in quality["zeroshot_auc"].values())
    assert set(quality["nearest_study"]) == {"finding", "modality"} and "nearest study" in run.stdout
    for key in ("search_precision_at_5", "search_precision_at_5_plain"):  # as hlip search ranks, and plain
        assert len(quality[key]) == 6 and all(0.0 <= v <= 1.0 for v in quality[key].values())
    assert "plain cosine" in run.stdout
    _hits_carry_impressions(out)
    # a second run reuses the library and the index (nothing regenerated, nothing re-embedded)
    again = subprocess.run([str(hlip), "demo", "--studies", "5", "--out", str(out), "--no-gui"],
                           capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and "Generating" not in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert "rebuilding" not in again.stdout
    # a demo index built without the reports (an older version's) is rebuilt with them
    assert subprocess.run([str(hlip), "index", "build", str(out / "library"), "--model", str(DEMO_MODEL), "--index",
                           str(out / "index"), "--rebuild", "--workers", "0", "--no-progress", "--device", "cpu"],
                          capture_output=True, text=True, timeout=900).returncode == 0
    assert not any(_impressions(out))  # built without --reports
    again = subprocess.run([str(hlip), "demo", "--studies", "5", "--out", str(out), "--no-gui"],
                           capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and "built without the library's reports" in again.stdout, again.stdout[-2000:]
    _hits_carry_impressions(out)
    # new demo weights (a package update): the demo rebuilds its own index instead of stopping on the mismatch
    import torch

    from hlip_engine.index import StudyIndex
    from hlip_engine.model import load_model

    model = load_model(DEMO_MODEL, device="cpu")
    with torch.no_grad():
        model.logit_scale.add_(0.01)  # other weights, so another sha256
    other = model.save(tmp_path / "updated.safetensors", text_weights=False)
    updated = subprocess.run([str(hlip), "demo", "--studies", "5", "--out", str(out), "--no-gui", "--model", str(other)],
                             capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert updated.returncode == 0, updated.stdout[-2000:] + updated.stderr[-2000:]
    assert "rebuilding the demo index" in updated.stdout and "Generating" not in updated.stdout
    index = StudyIndex.open(out / "index")
    assert len(index) == 5 and index.info["checkpoint"] == str(other.resolve())


def _impressions(out: Path) -> list[str]:
    from hlip_engine.index import StudyIndex

    with StudyIndex.open(out / "index") as index:
        return [str((m or {}).get("impression") or "") for m in index.metadata(list(range(len(index)))) if m]


def _hits_carry_impressions(out: Path) -> None:
    """Every study of the demo index has its report's impression, and `hlip search --json` hits show it."""
    reports = json.loads((out / "library" / "reports.json").read_text())
    impressions = _impressions(out)
    assert len(impressions) == len(reports) and all(i.strip() for i in impressions)
    hlip = Path(sys.executable).parent / "hlip"
    run = subprocess.run([str(hlip), "search", str(out / "index"), "mass with surrounding oedema", "-k", "5", "--json"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    hits = json.loads(run.stdout)["hits"]
    assert len(hits) == 5
    for hit in hits:
        impression = hit["impression"]
        assert impression.strip() and " ".join(impression.split()[:3]) in " ".join(reports[hit["study_uid"]].split())


def test_neighbour_agreement_says_what_embeddings_group_by():
    from hlip_engine.demo.quality import neighbour_agreement

    rng = np.random.default_rng(0)
    by_modality = np.repeat(np.eye(2) * 10, 4, axis=0) + rng.normal(0, 0.1, (8, 2))  # 4 MR then 4 CT
    findings = ["tumour", "normal"] * 4  # alternate within each modality
    modalities = ["MR"] * 4 + ["CT"] * 4
    assert neighbour_agreement(by_modality, findings, modalities) == {"finding": 0.0, "modality": 1.0}
    by_finding = np.array([[10.0, 0.0] if f == "tumour" else [0.0, 10.0] for f in findings]) + rng.normal(0, 0.1, (8, 2))
    assert neighbour_agreement(by_finding, findings, modalities)["finding"] == 1.0
