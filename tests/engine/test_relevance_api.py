"""relevance(model, study, prompt) end to end on a tiny model: real DICOM in, maps on each scan's voxels,
hierarchy views, head-CT window merging, NIfTI / PNG / JSON export, the ``hlip relevance`` command and its
deprecated old name ``hlip attention``."""
import json

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch

from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.io.sample_studies import reformat
from hlip_engine.model import create_model
from hlip_engine.relevance import Relevance, relevance
from hlip_engine.relevance.export import LPS_TO_RAS, export
from hlip_engine.study import Scan, Study

torch.set_num_threads(1)
UID = "1.2.826.0.1.3680043.8.498.5005"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():  # a random tiny model attends almost uniformly: sharpen it so the maps have shape
        for blk in m.visual.blocks:
            blk.attn.qkv.weight.mul_(6.0)
    return m


def brain_scan():
    rng = np.random.default_rng(0)
    vox = rng.uniform(100, 200, size=(20, 44, 36)).astype(np.float32)  # (slices, rows, columns)
    vox[6:12, 10:22, 8:20] = 900.0  # a bright "lesion"
    affine = np.eye(4)
    affine[:3, :3] = np.diag([0.9, 0.9, 3.0])
    affine[:3, 3] = (-16.0, -20.0, -30.0)
    return Scan(vox, affine, modality="MR", description="AX T2")


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    axial = brain_scan()
    write_dicom_series(axial, root / "S2", study_uid=UID, series_number=2, study_description="MRI BRAIN")
    write_dicom_series(reformat(axial, "coronal", "COR T2 MPR"), root / "S3", study_uid=UID, series_number=3,
                       study_description="MRI BRAIN")
    return root


@pytest.fixture(scope="module")
def study_and_rel(model, dicom_study):
    study = load_study(dicom_study)
    prepared = model.prepare(study)
    rel = relevance(model, prepared, "glioma", templates=["This MRI study shows: {}."], blocks=range(4))
    return study, prepared, rel


def test_maps_shapes_and_summaries(model, study_and_rel):
    study, prepared, rel = study_and_rel
    n = prepared.tensor.shape[0]
    assert isinstance(rel, Relevance) and n == len(study.scans) == 2
    assert rel.tokens.shape == (n, 4, 4, 4) and rel.tokens.dtype == np.float32
    assert (rel.tokens >= 0).all() and rel.tokens.max() > 0
    assert np.isclose(rel.scan_importance.sum(), 1.0, atol=1e-6)
    assert np.allclose(rel.scan_importance, rel.tokens.sum(axis=(1, 2, 3)) / rel.tokens.sum(), atol=1e-6)
    assert rel.slice_profiles.shape == (n, 4)
    assert np.allclose(rel.slice_profiles.sum(1), rel.tokens.sum(axis=(1, 2, 3)), rtol=1e-5)
    # the logit is the one zero-shot reports for this prompt
    from hlip_engine.relevance import prompt_embedding

    text = prompt_embedding(model, "glioma", ["This MRI study shows: {}."])
    with torch.no_grad():
        img = model.encode_image(prepared.tensor[None])[0]
    assert rel.logit == pytest.approx(float(model.logit_scale.detach().exp() * img @ text), abs=1e-4)


def test_volumes_land_on_each_scans_voxels(study_and_rel):
    study, prepared, rel = study_and_rel
    assert rel.volume_scans == [0, 1]
    for k, vol in zip(rel.volume_scans, rel.volumes):
        assert vol.shape == study.scans[k].shape
        i = prepared.scan_indices.index(k)
        assert np.allclose(vol, prepared.to_scan(rel.tokens[i], i))
        assert vol.max() > 0
    assert [int(np.argmax(v.sum(axis=(1, 2)))) for v in rel.volumes] == rel.peak_slices()


def test_same_map_from_tensor_or_prepared_study(model, study_and_rel):
    _, prepared, rel = study_and_rel
    bare = relevance(model, prepared.tensor[None], "glioma", templates=["This MRI study shows: {}."])
    assert bare.volumes is None
    assert np.allclose(bare.tokens, rel.tokens, atol=1e-7)


def test_hierarchy_views_match_dense_softmax_rows(model, study_and_rel):
    _, prepared, rel = study_and_rel
    vis = model.visual
    levels = [v.level for v in rel.hierarchy]
    assert levels == vis.cfg.blocks == ["scan", "study", "scan", "study"]
    dense = {}

    def grab(i):
        def hook(module, args):
            attn = module.attn
            q, k, _ = attn.qkv_heads(module.norm1(args[0]))
            a = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)  # [U, heads, T, T]
            dense[i] = a[:, :, 0].mean(dim=1)  # [U, T]
        return hook

    handles = [blk.register_forward_pre_hook(grab(i)) for i, blk in enumerate(vis.blocks)]
    try:
        with torch.no_grad():
            vis(prepared.tensor[None])
    finally:
        for h in handles:
            h.remove()
    n = prepared.tensor.shape[0]
    for view in rel.hierarchy:
        units = dense[view.block]
        assert units.shape[0] == (n if view.level == "scan" else 1)
        assert np.allclose(view.tokens.reshape(-1), units[:, 1:].reshape(-1).numpy(), atol=1e-6)
        assert np.allclose(view.prefix[:, 0], units[:, 0].numpy(), atol=1e-6)
        # each unit's row is a probability distribution over its own tokens
        per_unit = view.tokens.reshape(units.shape[0], -1).sum(1) + view.prefix.sum(1)
        assert np.allclose(per_unit, 1.0, atol=1e-5)


def test_head_ct_windows_are_merged_by_maximum(model):
    rng = np.random.default_rng(3)
    hu = rng.normal(30, 10, size=(12, 40, 40)).astype(np.float32)
    hu[4:8, 10:20, 10:20] = 70.0
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    study = Study("ct", [Scan(hu, affine, modality="CT", description="HEAD 5mm")])
    prepared = model.prepare(study, "head-ct")
    assert prepared.scan_indices == [0, 0, 0]  # blood, brain, bone windows
    rel = relevance(model, prepared, "hemorrhage")
    assert rel.volume_scans == [0] and len(rel.volumes) == 1
    each = np.stack([prepared.to_scan(rel.tokens[i], i) for i in range(3)])
    assert np.allclose(rel.volumes[0], each.max(axis=0))
    assert rel.volumes[0].shape == hu.shape


def test_export_nifti_png_json(study_and_rel, tmp_path):
    study, prepared, rel = study_and_rel
    files = export(rel, tmp_path, study=study, threshold=0.3)
    names = sorted(p.name for p in files)
    assert "montage.png" in names and "relevance.json" in names
    summary = json.loads((tmp_path / "relevance.json").read_text())
    assert summary["prompt"] == "glioma" and len(summary["scan_importance"]) == 2
    assert summary["peak_slices"] == rel.peak_slices()
    for k, fname in zip(rel.volume_scans, summary["nifti"]):
        scan = study.scans[k]
        img = nib.load(tmp_path / fname)
        data = np.asarray(img.dataobj)
        assert data.shape == scan.shape[::-1]  # (columns, rows, slices)
        assert np.allclose(data.transpose(2, 1, 0), rel.volumes[rel.volume_scans.index(k)])
        # same voxel -> same point in space: NIfTI RAS vs the scan's LPS
        s, r, c = 3, 5, 7
        ras = img.affine @ np.array([c, r, s, 1.0])
        assert np.allclose(LPS_TO_RAS @ np.append(scan.world((s, r, c)), 1.0), ras, atol=1e-4)
    png = mpimg.imread(tmp_path / "montage.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    assert png[..., :3].std() > 0.05  # drawn images, not a blank canvas


def test_bad_inputs_are_explained(model, study_and_rel):
    _, prepared, _ = study_and_rel
    with pytest.raises(ValueError, match=r"\[1, N, 1, D, H, W\]"):
        relevance(model, prepared.tensor, "glioma")  # missing the study axis
    with pytest.raises(ValueError, match="non-empty"):
        relevance(model, prepared, "  ")
    with pytest.raises(ValueError, match="block 9 does not exist"):
        relevance(model, prepared, "glioma", blocks=[9])
    with pytest.raises(ValueError, match="output 1 does not exist"):
        relevance(model, prepared, "glioma", output=1)
    with pytest.raises(ValueError, match="needs a PreparedStudy"):
        relevance(model, [1, 2, 3], "glioma")


def test_cli_writes_maps(model, dicom_study, tmp_path, capsys):
    from hlip_engine.cli import main

    ckpt = model.save(tmp_path / "tiny.safetensors")
    out = tmp_path / "rel"
    rc = main(["relevance", str(dicom_study), "--model", str(ckpt), "--prompt", "glioma", "--out", str(out),
               "--device", "cpu"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "glioma" in captured.out and "%" in captured.out and "deprecated" not in captured.err
    assert (out / "montage.png").exists() and len(list(out.glob("scan*.nii.gz"))) == 2
    rc = main(["relevance", str(tmp_path / "nowhere"), "--model", str(ckpt), "--prompt", "x", "--out", str(out)])
    assert rc == 2 and "nowhere" in capsys.readouterr().err


def test_attention_is_a_deprecated_alias_of_relevance(model, dicom_study, tmp_path, capsys):
    from hlip_engine.cli import main

    ckpt = model.save(tmp_path / "tiny.safetensors")
    out = tmp_path / "rel"
    rc = main(["attention", str(dicom_study), "--model", str(ckpt), "--prompt", "glioma", "--out", str(out),
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "glioma" in captured.out
    assert "deprecated" in captured.err and "hlip relevance" in captured.err  # the notice names the new command
    assert (out / "montage.png").exists() and len(list(out.glob("scan*.nii.gz"))) == 2
