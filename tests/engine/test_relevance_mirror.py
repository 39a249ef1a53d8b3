"""Mirrored guided rollout: guided rollout of the study and of its left-right mirror image, mapped back, their
geometric mean. Checked against the patient geometry (which grid axis is left-right, for axial, coronal and
sagittal series), against an independent computation of both views, and for its symmetry."""
import dataclasses

import numpy as np
import pytest
import torch
from test_relevance_api import brain_scan

from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.io.sample_studies import reformat
from hlip_engine.model import create_model
from hlip_engine.relevance import relevance
from hlip_engine.relevance.api import mirror_maps, mirror_scans
from hlip_engine.relevance.methods import METHODS
from hlip_engine.study import Scan

torch.set_num_threads(1)
UID = "1.2.826.0.1.3680043.8.498.5077"


@pytest.fixture(scope="module")
def three_planes(tmp_path_factory):
    root = tmp_path_factory.mktemp("planes")
    axial = brain_scan()
    write_dicom_series(axial, root / "S2", study_uid=UID, series_number=2)
    write_dicom_series(reformat(axial, "coronal", "COR T2"), root / "S3", study_uid=UID, series_number=3)
    # an acquired sagittal: thick slices across left-right, so the brain grid's depth is left-right
    affine = np.zeros((4, 4))
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (0, 0.9, 0), (0, 0, -0.9), (3.0, 0, 0)  # columns P, rows I
    affine[:3, 3], affine[3, 3] = (-28.0, -20.0, 20.0), 1.0
    write_dicom_series(Scan(brain_scan().voxels, affine, modality="MR", description="SAG T2"), root / "S4",
                       study_uid=UID, series_number=4)
    return load_study(root)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():
        for blk in m.visual.blocks:
            blk.attn.qkv.weight.mul_(6.0)  # peaked attention: maps with structure
    return m


def test_the_mirror_axis_is_the_patients_left_right(model, three_planes):
    """Two points 20 mm apart along the patient's x (LPS: right -> left), placed on each model grid through
    the scan's affine and the preprocessing geometry, differ along the mirror axis only."""
    prepared = model.prepare(three_planes)
    assert {s.orientation for s in three_planes.scans} == {"axial", "coronal", "sagittal"}
    axes_seen = set()
    for k, geo, axis in zip(prepared.scan_indices, prepared.geometry, prepared.mirror_axes):
        scan = three_planes.scans[k]
        inv = np.linalg.inv(scan.affine)
        centre = scan.world(np.array(scan.shape) / 2)
        grid = []
        for dx in (-10.0, 10.0):
            col, row, sl = (inv @ np.r_[centre + (dx, 0.0, 0.0), 1.0])[:3]
            grid.append(geo.model_index(np.array([sl, row, col])))
        step = np.abs(grid[1] - grid[0])
        assert step[axis] > 1.0 and np.allclose(np.delete(step, axis), 0.0, atol=1e-6), (scan.orientation, step)
        axes_seen.add(axis)
    assert len(axes_seen) >= 2  # the brain grid puts the thickest axis first: left-right is not always width


def test_mirrored_guided_rollout_is_the_geometric_mean_of_both_views(model, three_planes):
    prepared = model.prepare(three_planes)
    assert "mirrored-guided-rollout" in METHODS
    rel = relevance(model, prepared, "glioma", method="mirrored-guided-rollout")
    plain = relevance(model, prepared, "glioma", method="guided-rollout")
    # the mirror image made here independently: each model scan flipped along its left-right axis
    flipped = dataclasses.replace(prepared, tensor=torch.stack(
        [torch.flip(t, dims=[1 + a]) for t, a in zip(prepared.tensor, prepared.mirror_axes)]))
    other = relevance(model, flipped, "glioma", method="guided-rollout")
    back = np.stack([np.flip(f, axis=a) for f, a in zip(other.fine, prepared.mirror_axes)])
    np.testing.assert_allclose(rel.fine, np.sqrt(plain.fine * back), rtol=1e-4, atol=1e-9)
    assert rel.method == "mirrored-guided-rollout" and rel.logit == pytest.approx(plain.logit, abs=1e-5)
    assert len(rel.volumes) == len(three_planes.scans) and all(v.max() > 0 for v in rel.volumes)
    assert not np.allclose(rel.fine, plain.fine)  # the mirror view changed the map

    # the method is mirror-symmetric: the mirror image's map is the map, mirrored
    rel_of_mirror = relevance(model, flipped, "glioma", method="mirrored-guided-rollout")
    mirrored_back = np.stack([np.flip(f, axis=a) for f, a in zip(rel_of_mirror.fine, prepared.mirror_axes)])
    np.testing.assert_allclose(mirrored_back, rel.fine, rtol=1e-4, atol=1e-9)


def test_mirror_helpers_flip_each_scan_on_its_own_axis():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 2, 1, 3, 4, 5)
    m = mirror_scans(x, [2, 0])
    torch.testing.assert_close(m[0, 0, 0], torch.flip(x[0, 0, 0], dims=[2]))
    torch.testing.assert_close(m[0, 1, 0], torch.flip(x[0, 1, 0], dims=[0]))
    maps = x[0, :, 0]
    torch.testing.assert_close(mirror_maps(mirror_maps(maps, [1, 2]), [1, 2]), maps)


def test_a_bare_tensor_cannot_be_mirrored(model, three_planes):
    x = model.prepare(three_planes).tensor[None]
    with pytest.raises(ValueError, match="needs a PreparedStudy"):
        relevance(model, x, "glioma", method="mirrored-guided-rollout")
