"""CT-RATE exact: our item and report text equal the official ones, on the official cache layout.

The official steps (github Zch0414/hlip, src/hlip_train/data_chest_ct.py, written out here from their
description, not imported):
  1. img = torch.load(ROOT/train_N/train_N_a/train_N_a_k.pt): raw HU, [D, H, W]
  2. img = clip((img - (-1150)) / (350 - (-1150)), 0, 1)
  3. zero-pad each axis to at least 112 / 336 / 336: pad // 2 before, the rest after
  4. centre-crop: start (n - size) // 2 on each axis
  5. normalise: (img - mean(ImageNet mean)) / mean(ImageNet std)
  one random recon per study; the volumes train_1267_a_4, train_11755_a_3, train_11755_a_4 are left out;
  report = "The volume shows: {impression} The volume looks like: {findings}" (a one-element list).
"""
import json

import pytest
import torch
import torch.nn.functional as F

from training.ct_rate import INVALID_VOLUMES, manifest_from_reports, official_report
from training.data import StudyDataset

GRID = (112, 336, 336)
MEAN = (0.485 + 0.456 + 0.406) / 3
STD = (0.229 + 0.224 + 0.225) / 3


def official_item(hu: torch.Tensor) -> torch.Tensor:
    img = torch.clip((hu - (-1150.0)) / (350.0 - (-1150.0)), 0.0, 1.0)[None].float()
    _, d, h, w = img.shape
    pd, ph, pw = max(112 - d, 0), max(336 - h, 0), max(336 - w, 0)
    img = F.pad(img[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2, pd // 2, pd - pd // 2), value=0)[0]
    _, d, h, w = img.shape
    sd, sh, sw = (d - 112) // 2, (h - 336) // 2, (w - 336) // 2
    img = img[:, sd:sd + 112, sh:sh + 336, sw:sw + 336]
    return ((img - MEAN) / STD)[None]  # [1, 1, 112, 336, 336]


SHAPES = {"train_1_a_1": (131, 352, 347),  # larger on every axis (odd margins)
          "train_2_a_1": (97, 301, 320),  # smaller on every axis (odd pads)
          "train_3_a_1": (112, 400, 290)}  # exact depth, larger and smaller in-plane

REPORT = official_report("Bilateral 'pleural' effusion (small)", "Lungs: nodules in the right upper lobe")


@pytest.fixture(scope="module")
def ct_rate_cache(tmp_path_factory):
    """The official layout: ROOT/train_N/train_N_a/<recon>.pt raw HU; the manifest as raw_annotation.json."""
    root = tmp_path_factory.mktemp("ct_rate") / "train"
    g = torch.Generator().manual_seed(0)
    volumes = {}
    for recon, shape in {**SHAPES, "train_1267_a_4": (60, 200, 200), "train_11755_a_3": (60, 200, 200),
                         "train_11755_a_4": (60, 200, 200), "train_1267_a_1": (60, 200, 200)}.items():
        study = recon.rsplit("_", 1)[0]
        folder = root / study.rsplit("_", 1)[0] / study
        folder.mkdir(parents=True, exist_ok=True)
        hu = torch.rand(shape, generator=g) * 3000 - 1500  # beyond the window on both sides
        torch.save(hu, folder / f"{recon}.pt")
        volumes[recon] = hu
    manifest = {r.rsplit("_", 1)[0]: {"recons": [f"{r}.nii.gz"], "report": [REPORT]} for r in SHAPES}
    manifest["train_1267_a"] = {"recons": ["train_1267_a_1.nii.gz", "train_1267_a_4.nii.gz"], "report": [REPORT]}
    manifest["train_11755_a"] = {"recons": ["train_11755_a_3.nii.gz", "train_11755_a_4.nii.gz"], "report": [REPORT]}
    path = root.parent / "raw_annotation.json"
    path.write_text(json.dumps(manifest))
    return path, root, volumes


def test_the_report_is_the_official_string():
    assert REPORT == ("The volume shows: Bilateral pleural effusion small. "
                      "The volume looks like: Lungs: nodules in the right upper lobe.")
    assert official_report("Normal.", "") == "The volume shows: Normal. The volume looks like: nan."


def test_items_equal_the_official_on_volumes_larger_and_smaller_than_the_grid(ct_rate_cache):
    path, root, volumes = ct_rate_cache
    notes = []
    ds = StudyDataset(path, root=root, train=True, num_scans=8, size=GRID, exclude=INVALID_VOLUMES,
                      log=notes.append)
    assert [r.study_id for r in ds.records] == ["train_1_a", "train_2_a", "train_3_a", "train_1267_a"]
    assert ds.skipped.keys() == {"train_11755_a"}  # both its recons are invalid: skipped, with a note
    assert "train_1267_a: train_1267_a_4" in notes[0] and "train_11755_a" in notes[0]
    for i, recon in enumerate(SHAPES):
        scans, report, _ = ds[(i, 0)]
        assert tuple(scans.shape) == (1, 1, *GRID)  # one recon per study although num_scans is 8
        assert report == REPORT  # no prefix: the official string alone
        torch.testing.assert_close(scans, official_item(volumes[recon]), rtol=0, atol=1e-6)
    held = StudyDataset(path, root=root, train=False, size=GRID, exclude=INVALID_VOLUMES)
    scans, report, _ = held[3]
    assert scans.shape[0] == 1 and report == REPORT
    torch.testing.assert_close(scans, official_item(volumes["train_1267_a_1"]), rtol=0, atol=1e-6)


def test_one_recon_is_drawn_at_random_per_study(tmp_path):
    root = tmp_path / "train"
    folder = root / "train_9" / "train_9_a"
    folder.mkdir(parents=True)
    for k in (1, 2, 3):
        torch.save(torch.full((4, 8, 8), -1150.0 + 500 * k), folder / f"train_9_a_{k}.pt")
    manifest = {"train_9_a": {"recons": [f"train_9_a_{k}.nii.gz" for k in (1, 2, 3)], "report": [REPORT]}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    ds = StudyDataset(tmp_path / "m.json", root=root, train=True, num_scans=4, size=(4, 8, 8))
    seen = {round(float(ds[(0, e)][0][0, 0, 2, 4, 4] * STD + MEAN), 3) for e in range(30)}
    assert seen == {round(500 * k / 1500, 3) for k in (1, 2, 3)}


def test_the_official_manifest_from_the_reports_csv(tmp_path):
    csv_path = tmp_path / "train_reports.csv"
    csv_path.write_text('VolumeName,ClinicalInformation_EN,Findings_EN,Impressions_EN\n'
                        'train_1_a_1.nii.gz,x,"Lungs: nodules in the right upper lobe","Bilateral \'pleural\' '
                        'effusion (small)"\ntrain_1_a_2.nii.gz,x,other,other\n')
    manifest = manifest_from_reports(csv_path)
    assert manifest == {"train_1_a": {"recons": ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz"], "report": [REPORT]}}
