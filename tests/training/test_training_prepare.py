"""training.prepare on real DICOM written by pydicom: cache, manifest, skip report, resume, then training reads it."""
import csv
import json

import numpy as np
import pytest
import torch

from hlip_engine.io import write_dicom_series
from hlip_engine.study import Scan
from training.data import StudyDataset, load_manifest
from training.prepare import main as prepare_main

OPTIONS = ["--option", "slices=16", "--option", "size=40", "--option", "crop=32"]


def mr_scan(seed: int, description: str, shape=(12, 48, 40)) -> Scan:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    voxels = (800 * np.exp(-(x ** 2 + y ** 2 + z ** 2) * 2) + rng.normal(50, 10, shape)).astype(np.float32)
    affine = np.diag([0.9, 0.9, 4.0, 1.0])  # columns, rows 0.9 mm; slices 4 mm apart (axial)
    return Scan(voxels, affine, modality="MR", description=description)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    uids = {}
    for k, n_series in enumerate([2, 1, 1]):
        uid = f"1.2.826.0.1.3680043.8.498.{7000 + k}"
        uids[f"patient{k}"] = uid
        for s in range(n_series):
            write_dicom_series(mr_scan(10 * k + s, ("AX T1", "AX FLAIR")[s]), root / f"patient{k}" / f"series{s}",
                               study_uid=uid, series_number=s + 1, study_description="MRI BRAIN")
    reports = root.parent / "reports.csv"
    with open(reports, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["StudyInstanceUID", "report"])
        w.writerow([uids["patient0"], "Small vessel disease. No acute infarct."])
        w.writerow([uids["patient1"], "Normal study."])
        # patient2 has no report: it must be skipped with the reason
    return root, reports, uids


def test_prepare_caches_uint8_in_the_official_layout_and_resumes(archive, tmp_path):
    root, reports, uids = archive
    out = tmp_path / "cache"
    args = [str(root), "--out", str(out), "--recipe", "brain-mri", "--reports", str(reports), "--workers", "0",
            *OPTIONS]
    assert prepare_main(args) == 0
    manifest = load_manifest(out / "manifest.json")
    sid0 = uids["patient0"]
    assert set(manifest) == {uids["patient0"], uids["patient1"]}
    assert manifest[sid0]["report"] == ["Small vessel disease.", "No acute infarct."]
    assert len(manifest[sid0]["series"]) == 2 and manifest[sid0]["modality"] == "MR"
    # axial scans: the patient's left-right is the column axis of the cached tensor (--flip-lr flips it)
    assert [s["lr_axis"] for s in manifest[sid0]["series"].values()] == [2, 2]
    skipped = json.loads((out / "skipped.json").read_text())
    assert any("no report" in reason for reason in skipped.values())
    # tensors: uint8 [16, 32, 32] at <study>/<series>/img.pt, and they are the engine's preprocessing
    from hlip_engine.io import load_study
    from hlip_engine.preprocessing import preprocess

    name = sorted(manifest[sid0]["series"])[0]
    cached = torch.load(out / sid0 / name / "img.pt", weights_only=True)
    assert cached.dtype == torch.uint8 and tuple(cached.shape) == (16, 32, 32)
    study = load_study(root / "patient0")
    engine = preprocess(study, "brain-mri", slices=16, size=40, crop=32).tensor
    order = [s.description for s in study.scans]
    expected = engine[order.index(manifest[sid0]["series"][name]["description"]), 0]
    ds = StudyDataset(out / "manifest.json", train=False, size=(16, 32, 32))
    scans, report, _ = ds[[r.study_id for r in ds.records].index(sid0)]
    assert report == "This MRI study shows: Small vessel disease. No acute infarct."
    got = scans[list(manifest[sid0]["series"]).index(name), 0]  # evaluation keeps the manifest's order
    assert (got - expected).abs().max().item() <= 0.5 / 255 / 0.226 + 1e-5  # uint8 rounding only
    # resume: finished studies are not redone
    mtime = (out / sid0 / name / "img.pt").stat().st_mtime_ns
    assert prepare_main(args) == 0
    assert (out / sid0 / name / "img.pt").stat().st_mtime_ns == mtime
    assert set(load_manifest(out / "manifest.json")) == set(manifest)
    # a different recipe on the same cache is refused with a clear message
    assert prepare_main([*args[:-6], "--option", "slices=8", "--option", "size=40", "--option", "crop=32"]) == 2


def test_prepare_with_two_workers_and_float16(archive, tmp_path):
    root, reports, uids = archive
    out = tmp_path / "cache16"
    assert prepare_main([str(root), "--out", str(out), "--recipe", "brain-mri", "--reports", str(reports),
                         "--workers", "2", "--dtype", "float16", *OPTIONS]) == 0
    manifest = load_manifest(out / "manifest.json")
    assert len(manifest) == 2
    sid = uids["patient1"]
    (name,) = manifest[sid]["series"]
    x = torch.load(out / sid / name / "img.pt", weights_only=True)
    assert x.dtype == torch.float16 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_reports_file_errors_name_the_file(tmp_path, archive):
    root, _, _ = archive
    bad = tmp_path / "reports.json"
    bad.write_text("[1, 2]")
    assert prepare_main([str(root), "--out", str(tmp_path / "c"), "--recipe", "brain-mri", "--reports", str(bad)]) == 2
    assert prepare_main([str(tmp_path / "missing"), "--out", str(tmp_path / "c"), "--recipe", "brain-mri",
                         "--reports", str(bad)]) == 2


def test_sections_keep_findings_and_impression_only(archive, tmp_path):
    from training.reports import keep_sections

    text = ("CLINICAL HISTORY: Fall.\nTECHNIQUE: Axial non-contrast CT of the head.\n"
            "FINDINGS: No acute haemorrhage. Ventricles normal.\nIMPRESSION: Normal non-contrast CT of the head.")
    assert keep_sections(text, ["findings", "IMPRESSION"]) == (
        "FINDINGS: No acute haemorrhage. Ventricles normal.\nIMPRESSION: Normal non-contrast CT of the head.")
    sentences = ["CLINICAL HISTORY: Fall.", "FINDINGS: Acute infarct.", "No haemorrhage.", "IMPRESSION: Infarct."]
    assert keep_sections(sentences, ["FINDINGS", "IMPRESSION"]) == sentences[1:]
    assert keep_sections("Normal study. No acute infarct.", ["FINDINGS"]) == "Normal study. No acute infarct."
    assert keep_sections("COMPARISON: None.", ["FINDINGS"]) == ""

    root, _, uids = archive
    reports = tmp_path / "reports.json"
    reports.write_text(json.dumps({uids["patient0"]: text, uids["patient1"]: "CLINICAL HISTORY: Headache.",
                                   uids["patient2"]: "Normal study."}))
    out = tmp_path / "cache"
    assert prepare_main([str(root), "--out", str(out), "--recipe", "brain-mri", "--reports", str(reports),
                         "--workers", "0", "--sections", "FINDINGS", "IMPRESSION", *OPTIONS]) == 0
    manifest = load_manifest(out / "manifest.json")
    assert manifest[uids["patient0"]]["report"] == ["FINDINGS: No acute haemorrhage.", "Ventricles normal.",
                                                   "IMPRESSION: Normal non-contrast CT of the head."]
    assert manifest[uids["patient2"]]["report"] == ["Normal study."]
    skipped = json.loads((out / "skipped.json").read_text())
    assert any("none of the sections FINDINGS IMPRESSION" in why for why in skipped.values())
    assert uids["patient1"] not in manifest


def test_training_runs_on_the_prepared_cache(archive, tmp_path):
    """prepare -> pretrain on real (DICOM-derived) data, then continue from the exported model with --init."""
    from training.config import parse_config
    from training.pretrain import train

    root, reports, _ = archive
    cache = tmp_path / "cache"
    assert prepare_main([str(root), "--out", str(cache), "--recipe", "brain-mri", "--reports", str(reports),
                         "--workers", "0", *OPTIONS]) == 0
    torch.set_num_threads(1)
    base = ["--arch", "hlip_tiny", "--data", str(cache / "manifest.json"), "--val-data", str(cache / "manifest.json"),
            "--batch-size", "2", "--num-scans", "3", "--steps", "2", "--lock-text", "--workers", "0",
            "--recall-k", "1"]
    train(parse_config([*base, "--out", str(tmp_path / "run")]))
    with open(tmp_path / "run" / "eval.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert float(row["eval_studies"]) == 2 and 0.0 <= float(row["study_to_report_R@1"]) <= 1.0
    model = train(parse_config([*base, "--steps", "1", "--init", str(tmp_path / "run" / "model.safetensors"),
                                "--out", str(tmp_path / "again")]))
    assert model.visual.cfg.input_size == (16, 32, 32)
    assert (tmp_path / "again" / "model.safetensors").is_file()
