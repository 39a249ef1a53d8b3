"""HLIP .pt scan tensors (the official layouts) -> Study, and through the recipes as the official loaders."""
import numpy as np
import pytest
import torch

from hlip_engine.io.tensors import is_tensor_folder, load_tensor_study, tensor_study_folder
from hlip_engine.preprocessing import preprocess
from hlip_engine.study import StudyLoadError

MEAN = torch.as_tensor((0.485, 0.456, 0.406)).mean()
STD = torch.as_tensor((0.229, 0.224, 0.225)).mean()


def official_brain_loader(study_dir, files, num_slices, size=256, crop=224):
    """src/hlip_test/inference_pub_brain_5.py's loader, re-stated (sorted files instead of listdir order)."""
    imgs = []
    for name in files:
        img = torch.load(study_dir / name, weights_only=True)
        if len(img.shape) == 4:
            img = img[:, :, :, 0]
        img = img[None, ...].float()
        _, _, h, w = img.shape
        s = max(h, w)
        pad_h, pad_w = s - h, s - w
        left, top = pad_w // 2, pad_h // 2
        img = torch.nn.functional.pad(img, (left, pad_w - left, top, pad_h - top), mode="constant", value=0)
        img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear")
        img = torch.nn.functional.interpolate(img[None, ...], size=(num_slices, size, size),
                                              mode="nearest-exact").squeeze(0)
        c = (size - crop) // 2
        img = img[:, :, c:c + crop, c:c + crop]
        imgs.append((img - MEAN) / STD)
    return torch.stack(imgs, dim=0)  # [n, 1, d, h, w]


def test_pub_brain_5_folder_matches_the_official_loader(tmp_path):
    rng = np.random.default_rng(0)
    torch.save(torch.from_numpy(rng.uniform(0, 1, (20, 30, 26)).astype(np.float32)), tmp_path / "a-t1c.pt")
    torch.save(torch.from_numpy(rng.uniform(0, 1, (12, 24, 24, 2)).astype(np.float32)), tmp_path / "b-dwi.pt")
    assert is_tensor_folder(tmp_path) and is_tensor_folder(tmp_path / "a-t1c.pt")
    study = load_tensor_study(tmp_path)
    assert [s.description for s in study.scans] == ["a-t1c", "b-dwi"] and study.modality == "MR"
    assert study.scans[1].shape == (12, 24, 24) and study.scans[0].attributes["hlip_tensor"] == "unit"
    p = preprocess(study, "brain-mri", slices=24, size=48, crop=40)
    ref = official_brain_loader(tmp_path, ["a-t1c.pt", "b-dwi.pt"], 24, 48, 40)
    assert p.tensor.shape == (2, 1, 24, 40, 40)
    assert torch.equal(p.tensor, ref)  # no orientation / percentile step: the tensors were already processed
    assert p.to_scan(torch.ones(24, 40, 40), 0).shape == (20, 30, 26)


def test_brainmri220k_layout_reads_uint8_over_255(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, (10, 16, 16), dtype=np.uint8)
    for scan in ("series_2", "series_1"):
        (tmp_path / scan).mkdir()
        torch.save(torch.from_numpy(data), tmp_path / scan / "img.pt")
    study = load_tensor_study(tmp_path)
    assert [s.description for s in study.scans] == ["series_1", "series_2"]
    assert tensor_study_folder(tmp_path / "series_1" / "img.pt") == tmp_path
    expected = torch.from_numpy(data)[None].float() / 255.0  # the training loader's rule
    assert torch.equal(torch.from_numpy(study.scans[0].voxels)[None], expected)


def test_ct_rate_tensor_matches_the_official_zero_shot_loader(tmp_path):
    # float32, the official default (--save-astype float16 would window in half precision there)
    hu = torch.from_numpy(np.random.default_rng(2).uniform(-1500, 800, (30, 40, 36)).astype(np.float32))
    torch.save(hu, tmp_path / "valid_1_a_1.pt")
    study = load_tensor_study(tmp_path)
    assert study.modality == "CT" and study.scans[0].spacing == (3.0, 1.0, 1.0)
    p = preprocess(study, "chest-ct", slices=24, crop=32)
    # src/hlip_test/zeroshot_ct_rate.py: window, pad, centre crop, normalise (here 24 x 32 x 32)
    img = torch.clip((hu - (-1150.0)) / (350.0 - (-1150.0)), 0.0, 1.0)[None, ...].float()
    img = img[:, 3:27, 4:36, 2:34]
    assert torch.equal(p.tensor[0], (img - MEAN) / STD)
    with pytest.raises(ValueError, match="is CT; recipe 'brain-mri' takes MR"):
        preprocess(study, "brain-mri")


def test_bad_tensor_files_are_skipped_or_reported(tmp_path):
    torch.save({"state_dict": torch.zeros(2)}, tmp_path / "a_dict.pt")
    torch.save(torch.zeros(4, 4), tmp_path / "b_flat.pt")
    torch.save(torch.zeros(2, 3, 4, dtype=torch.int32), tmp_path / "c_int.pt")
    (tmp_path / "d_broken.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(StudyLoadError, match="none of its 4 tensor files"):
        load_tensor_study(tmp_path)
    torch.save(torch.rand(3, 4, 5), tmp_path / "e_good.pt")
    study = load_tensor_study(tmp_path)
    assert [s.description for s in study.scans] == ["e_good"]
    reasons = [r for _, r in study.skipped]
    assert "holds a dict" in reasons[0] and "got shape (4, 4)" in reasons[1]
    assert "neither uint8 nor floating" in reasons[2] and "not a readable torch tensor" in reasons[3]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_tensor_folder(empty) and not is_tensor_folder(tmp_path / "missing")
    with pytest.raises(StudyLoadError, match="no HLIP scan tensors"):
        load_tensor_study(empty)


def test_load_study_dispatches_tensor_folders(tmp_path):
    from hlip_engine import load_study

    torch.save(torch.rand(3, 4, 5), tmp_path / "flair.pt")
    study = load_study(tmp_path)
    assert [s.description for s in study.scans] == ["flair"] and study.scans[0].attributes["hlip_tensor"] == "unit"


def test_discover_finds_one_study_per_brainmri220k_folder(tmp_path):
    """<study>/<scan>/img.pt: each study folder is one study, not each scan folder."""
    from hlip_engine.io import discover

    for study in ("s1", "s2"):
        for scan in ("t1", "flair"):
            (tmp_path / study / scan).mkdir(parents=True)
            torch.save((torch.rand(8, 16, 16) * 255).to(torch.uint8), tmp_path / study / scan / "img.pt")
    refs = discover(tmp_path)
    assert sorted((r.uid, r.kind) for r in refs) == [("s1", "tensors"), ("s2", "tensors")]
    from hlip_engine.io import load_study

    assert len(load_study(refs[0]).scans) == 2
