"""4-D series written with pydicom -> one scan per thing a radiologist reads, each compared with dcm2niix.

Classic DWI (b=0 and 3 b-values x 6 directions as repeated slices, b-values in the standard tag or the
GE / Philips / Siemens private ones), a 3-echo series, a 20-frame time series, an enhanced multi-frame DWI
whose frames a DimensionIndex describes, and Philips' real enhanced MPRAGE header from nibabel. Every scan
is checked against dcm2niix in patient space (sampled voxels mapped through both affines, one global linear
intensity fit): a DWI trace against the mean of dcm2niix's volumes at that b-value, a time series against
the mean over time, an echo against dcm2niix's file of that echo.
"""
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dcm2niix_compare import NIBABEL_DATA, agree_with_nifti, run_dcm2niix
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from hlip_engine import Scan, load_study
from hlip_engine.io import write_dicom_series, write_enhanced_series

STUDY = "1.2.826.0.1.3680043.8.498.2102"
SHAPE = (6, 10, 12)  # slices, rows, columns: small, so dcm2niix and the loader run in milliseconds


def _affine() -> np.ndarray:
    a = np.eye(4)
    t = np.radians(8)
    a[:3, :3] = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]]) @ np.diag([1.2, 1.1, 2.5])
    a[:3, 3] = [-10.0, -20.0, 30.0]
    return a


def _volumes(n: int, seed: int) -> list[np.ndarray]:
    """Integer-valued volumes (slope 1 in every file: the 4-D volumes share one intensity scale)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(100, 4000, SHAPE).astype(np.float32) for _ in range(n)]


def _write_classic(root: Path, vols, per_volume, *, description: str, series_number: int,
                   image_type=("ORIGINAL", "PRIMARY", "M", "ND"), private=None) -> None:
    """One classic (one file per slice) series holding every volume; ``per_volume[v]`` are extra attributes
    of volume v, ``private(ds, v)`` adds vendor tags. InstanceNumbers run through the whole series."""
    uid = pydicom.uid.generate_uid()
    n_slices = vols[0].shape[0]
    for v, (vol, extra) in enumerate(zip(vols, per_volume)):
        scan = Scan(vol, _affine(), modality="MR", description=description, series_uid=uid)
        paths = write_dicom_series(scan, root / f"v{v:03d}", study_uid=STUDY, series_number=series_number,
                                   image_type=image_type, extra=extra)
        for k, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            ds.InstanceNumber = v * n_slices + k + 1
            if private is not None:
                private(ds, v)
            ds.save_as(path)


def assert_dwi_like_dcm2niix(study, tmp_path: Path, bvals) -> None:
    """dcm2niix converts tmp_path/dcm to one 4-D series with these b-values, and each of our DWI scans is the
    mean of its b-value's volumes."""
    (nii,) = run_dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    found = np.loadtxt(nii.with_suffix(".bval"))
    assert sorted(found) == sorted(bvals)
    for scan in study.scans:
        assert agree_with_nifti(scan, nii, np.nonzero(found == scan.attributes["DiffusionBValue"])[0]) < 1e-6


# --- classic DWI -------------------------------------------------------------------------------------
BVALS = [0, 0] + [500] * 6 + [1000] * 6 + [2000] * 6
DIRS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.7071, 0.7071, 0), (0, 0.7071, 0.7071), (0.7071, 0, 0.7071)]
GRADS = [(0, 0, 0), (0, 0, 0)] + DIRS * 3


def _ge(ds, v):
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.add_new(Tag(0x0043, 0x0010), "LO", "GEMS_PARM_01")
    ds.add_new(Tag(0x0043, 0x1039), "IS", [str(1_000_000_000 + BVALS[v]), "8", "0", "0"])


def _philips(ds, v):
    ds.Manufacturer = "Philips Medical Systems"
    ds.add_new(Tag(0x2001, 0x0010), "LO", "Philips Imaging DD 001")
    ds.add_new(Tag(0x2001, 0x1003), "FL", float(BVALS[v]))


def _siemens(ds, v):
    ds.Manufacturer = "SIEMENS"
    ds.add_new(Tag(0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new(Tag(0x0019, 0x100C), "IS", str(BVALS[v]))
    if BVALS[v]:
        ds.add_new(Tag(0x0019, 0x100E), "FD", list(GRADS[v]))


@pytest.mark.parametrize("vendor", ["standard", "GE", "Philips", "Siemens"])
def test_classic_dwi_gives_one_trace_per_b_value(tmp_path, vendor):
    vols = _volumes(len(BVALS), seed=1)
    if vendor == "standard":
        per_volume = [{"DiffusionBValue": float(b), "DiffusionGradientOrientation": list(map(float, g)),
                       "AcquisitionNumber": v + 1} for v, (b, g) in enumerate(zip(BVALS, GRADS))]
        private = None
    else:
        per_volume = [{"AcquisitionNumber": v + 1} for v in range(len(BVALS))]
        private = {"GE": _ge, "Philips": _philips, "Siemens": _siemens}[vendor]
    _write_classic(tmp_path / "dcm", vols, per_volume, description="AX DWI", series_number=5,
                   image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"), private=private)
    study = load_study(tmp_path / "dcm")
    assert study.skipped == []
    kinds = [s.attributes["ScanKind"] for s in study.scans]
    # Directions come from the gradient tags where written, else from the number of volumes (GE, Philips).
    assert kinds == ["DWI b=0 (mean of 2 volumes)"] + [f"DWI b={b} (trace of 6 directions)" for b in (500, 1000, 2000)]
    assert [s.description for s in study.scans][1] == "AX DWI [DWI b=500 (trace of 6 directions)]"
    b = np.array(BVALS)
    for scan in study.scans:
        assert scan.shape == SHAPE
        expected = np.mean([vols[v] for v in np.nonzero(b == scan.attributes["DiffusionBValue"])[0]], axis=0)
        np.testing.assert_allclose(scan.voxels, expected, rtol=1e-5)
        np.testing.assert_allclose(scan.affine, _affine(), atol=1e-5)
    if vendor in ("standard", "Siemens"):  # dcm2niix reads b-values from these tags in classic files
        assert_dwi_like_dcm2niix(study, tmp_path, BVALS)


# --- multi-echo ----------------------------------------------------------------------------------------
def test_three_echo_series_gives_one_scan_per_echo(tmp_path):
    vols = _volumes(3, seed=2)
    tes = (10.0, 40.0, 80.0)
    _write_classic(tmp_path / "dcm", vols, [{"EchoNumbers": e + 1, "EchoTime": te} for e, te in enumerate(tes)],
                   description="ME GRE", series_number=6)
    study = load_study(tmp_path / "dcm")
    assert [s.description for s in study.scans] == [f"ME GRE [echo {e} of 3]" for e in (1, 2, 3)]
    assert [s.attributes["EchoTime"] for s in study.scans] == list(tes)
    niis = run_dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    assert len(niis) == 3
    for e, scan in enumerate(study.scans):
        np.testing.assert_allclose(scan.voxels, vols[e], rtol=1e-6)
        (nii,) = [p for p in niis if json.loads(p.with_suffix(".json").read_text())["EchoTime"] * 1000 == tes[e]]
        assert agree_with_nifti(scan, nii) < 1e-6


# --- time series -------------------------------------------------------------------------------------
def test_twenty_frame_time_series_is_one_mean_scan_with_time_points_and_step(tmp_path):
    vols = _volumes(20, seed=3)
    per_volume = [{"TemporalPositionIdentifier": t + 1, "NumberOfTemporalPositions": 20,
                   "AcquisitionTime": f"1000{t * 2:02d}.000000", "ScanningSequence": "EP",
                   "RepetitionTime": 2000.0, "AcquisitionNumber": t + 1} for t in range(20)]
    _write_classic(tmp_path / "dcm", vols, per_volume, description="rs_fMRI_bold", series_number=9)
    study = load_study(tmp_path / "dcm")
    (scan,) = study.scans
    assert scan.description == "rs_fMRI_bold [fMRI mean of 20 volumes]"
    assert scan.attributes["NumberOfTimePoints"] == 20 and scan.attributes["TimeStepSeconds"] == 2.0
    np.testing.assert_allclose(scan.voxels, np.mean(vols, axis=0), rtol=1e-5)
    (nii,) = run_dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    assert nib.load(nii).shape[3] == 20
    assert agree_with_nifti(scan, nii) < 1e-6


def test_two_repeats_without_time_or_diffusion_stay_separate_acquisitions(tmp_path):
    vols = _volumes(2, seed=4)
    _write_classic(tmp_path, vols, [{"AcquisitionNumber": a + 1} for a in range(2)], description="T2 NEX",
                   series_number=3)
    scans = load_study(tmp_path).scans
    assert [s.description for s in scans] == ["T2 NEX [acquisition 1]", "T2 NEX [acquisition 2]"]


# --- enhanced multi-frame DWI with a DimensionIndex --------------------------------------------------
def _write_enhanced_dwi(path: Path, vols, bvals, grads) -> None:
    n_slices = vols[0].shape[0]
    frames = np.concatenate(vols)  # frame f = volume f // n_slices, slice f % n_slices
    write_enhanced_series(Scan(frames, _affine(), modality="MR", description="DWI enhanced"), path,
                          study_uid=STUDY, series_number=11, image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"))
    ds = pydicom.dcmread(path)
    pointers = [(0x0020, 0x9056), (0x0020, 0x9057), (0x0018, 0x9087), (0x0018, 0x9089)]
    dims = []
    for group, elem in pointers:
        item = Dataset()
        item.DimensionIndexPointer = Tag(group, elem)
        item.FunctionalGroupPointer = Tag(0x0020, 0x9111) if group == 0x0020 else Tag(0x0018, 0x9117)
        dims.append(item)
    ds.DimensionIndexSequence = dims
    b_index = {b: i + 1 for i, b in enumerate(sorted(set(bvals)))}
    for f, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        v, k = divmod(f, n_slices)
        frame.PlanePositionSequence[0].ImagePositionPatient = \
            [f"{x:.6f}" for x in (_affine() @ [0, 0, k, 1])[:3]]
        content = frame.FrameContentSequence[0]
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1, b_index[bvals[v]], (v % 6) + 1]
        diffusion = Dataset()
        diffusion.DiffusionBValue = float(bvals[v])
        diffusion.DiffusionDirectionality = "DIRECTIONAL" if bvals[v] else "NONE"
        if bvals[v]:
            direction = Dataset()
            direction.DiffusionGradientOrientation = list(map(float, grads[v]))
            diffusion.DiffusionGradientDirectionSequence = [direction]
        frame.MRDiffusionSequence = [diffusion]
    ds.save_as(path)


def test_enhanced_multiframe_dwi_splits_by_its_dimension_index(tmp_path):
    bvals = [0] + [1000] * 6
    vols = _volumes(len(bvals), seed=5)
    _write_enhanced_dwi(tmp_path / "dcm" / "dwi.dcm", vols, bvals, [None] + DIRS)
    study = load_study(tmp_path / "dcm")
    assert study.skipped == []
    b0, b1000 = study.scans
    assert b0.attributes["ScanKind"] == "DWI b=0"
    assert b1000.attributes["ScanKind"] == "DWI b=1000 (trace of 6 directions)"
    assert b1000.attributes["DimensionIndex"] == ["StackID", "InStackPositionNumber", "DiffusionBValue",
                                                  "DiffusionGradientOrientation"]
    np.testing.assert_allclose(b0.voxels, vols[0], rtol=1e-5)
    np.testing.assert_allclose(b1000.voxels, np.mean(vols[1:], axis=0), rtol=1e-5)
    assert_dwi_like_dcm2niix(study, tmp_path, bvals)


# --- Philips' real enhanced MPRAGE (nibabel) ----------------------------------------------------------
def test_philips_enhanced_mprage_agrees_with_dcm2niix(tmp_path):
    ds = pydicom.dcmread(gzip.open(NIBABEL_DATA / "philips_mprage.dcm.gz"))
    n = int(ds.NumberOfFrames)
    rng = np.random.default_rng(8)
    ds.PixelData = rng.integers(0, 3000, (n, ds.Rows, ds.Columns)).astype(np.uint16).tobytes()
    (tmp_path / "dcm").mkdir()
    ds.save_as(tmp_path / "dcm" / "mprage.dcm")
    (scan,) = load_study(tmp_path / "dcm").scans
    assert scan.shape == (n, 256, 256) and scan.orientation == "sagittal"
    (nii,) = run_dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    assert agree_with_nifti(scan, nii) < 1e-5  # Philips' float scale may differ by a constant factor


# --- the brain-MRI recipe and the model take a DWI trace like any other scan ------------------------------
def test_dwi_trace_from_a_mosaic_reaches_the_model(tmp_path):
    import torch

    from hlip_engine.io.dicom_write_mosaic import write_mosaic_dwi
    from hlip_engine.model import create_model
    from hlip_engine.preprocessing import preprocess
    from hlip_engine.study import Study

    torch.manual_seed(0)
    rng = np.random.default_rng(9)
    trace = rng.uniform(100, 800, (20, 40, 40)).astype(np.float32)
    trace[8:12, 15:25, 10:20] = 2000.0  # a bright "infarct" on the trace image
    affine = np.diag([1.8, 1.8, 5.0, 1.0])
    affine[:3, 3] = (-36.0, -36.0, -50.0)
    write_mosaic_dwi(Scan(trace, affine, modality="MR", description="ep2d_diff_tra"), tmp_path,
                     study_uid=STUDY, series_number=4, n_directions=6)
    study = load_study(tmp_path)
    b0, b1000 = study.scans
    assert b1000.attributes["ScanKind"] == "DWI b=1000 (trace of 6 directions)"
    grid = dict(slices=16, size=40, crop=32)
    prepared = preprocess(study, "brain-mri", **grid)
    assert prepared.tensor.shape == (2, 1, 16, 32, 32)
    assert prepared.labels[1] == "ep2d_diff_tra [DWI b=1000 (trace of 6 directions)]"
    # The model input of the trace is the recipe applied to the mean of the six directions.
    direct = preprocess(Study("direct", [Scan(trace, affine, modality="MR")]), "brain-mri", **grid)
    torch.testing.assert_close(prepared.tensor[1], direct.tensor[0], atol=1e-3, rtol=0)
    model = create_model("hlip_tiny").eval()
    with torch.no_grad():
        emb = model.encode_image(prepared.tensor[None])
        emb_b0_only = model.encode_image(prepared.tensor[None, :1])
    assert emb.shape == (1, model.embed_dim) and torch.isfinite(emb).all()
    assert not torch.allclose(emb, emb_b0_only)  # the trace changes what the model sees


def test_magnitude_and_phase_time_series_are_kept_apart(tmp_path):
    vols = _volumes(10, seed=11)
    for part, image_type in ((0, ("ORIGINAL", "PRIMARY", "M", "ND")), (1, ("ORIGINAL", "PRIMARY", "P", "ND"))):
        per_volume = [{"TemporalPositionIdentifier": t + 1, "ScanningSequence": "EP", "RepetitionTime": 1000.0}
                      for t in range(5)]
        _write_classic(tmp_path / f"part{part}", vols[5 * part:5 * part + 5], per_volume,
                       description="ep2d_bold", series_number=4, image_type=image_type)
    # one series: both parts share the SeriesInstanceUID
    uid = pydicom.dcmread(next((tmp_path / "part0").rglob("*.dcm"))).SeriesInstanceUID
    for path in (tmp_path / "part1").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.save_as(path)
    magnitude, phase = load_study(tmp_path).scans
    assert magnitude.description == "ep2d_bold [type M, fMRI mean of 5 volumes]"
    assert phase.attributes["ScanKind"] == "fMRI mean of 5 volumes, type P"
    assert magnitude.attributes["TimeStepSeconds"] == 1.0
    np.testing.assert_allclose(magnitude.voxels, np.mean(vols[:5], axis=0), rtol=1e-5)
    np.testing.assert_allclose(phase.voxels, np.mean(vols[5:], axis=0), rtol=1e-5)


def test_load_volumes_gives_back_the_4d_data_behind_an_averaged_scan(tmp_path):
    from hlip_engine.io import load_volumes

    vols = _volumes(len(BVALS), seed=12)
    per_volume = [{"DiffusionBValue": float(b), "DiffusionGradientOrientation": list(map(float, g)),
                   "AcquisitionNumber": v + 1} for v, (b, g) in enumerate(zip(BVALS, GRADS))]
    _write_classic(tmp_path, vols, per_volume, description="AX DWI", series_number=5,
                   image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"))
    study = load_study(tmp_path)
    b1000 = study.scans[2]
    data, info = load_volumes(b1000)
    assert data.shape == (6, *SHAPE) and [i["b_value"] for i in info] == [1000.0] * 6
    assert [tuple(i["gradient"]) for i in info] == [tuple(map(float, d)) for d in DIRS]
    np.testing.assert_allclose(data, np.stack(vols[8:14]), rtol=1e-6)
    np.testing.assert_allclose(data.mean(axis=0), b1000.voxels, rtol=1e-5)
    plain = Scan(vols[0], _affine())
    one, _ = load_volumes(plain)
    assert one.shape == (1, *SHAPE)


def test_scanner_trace_in_a_dwi_series_is_not_averaged_with_the_directions(tmp_path):
    # Philips-style: b=0, six directions at b=1000, then the scanner's isotropic image at b=1000.
    bvals = [0] + [1000] * 7
    vols = _volumes(len(bvals), seed=13)
    per_volume = [{"DiffusionBValue": float(b), "AcquisitionNumber": v + 1,
                   "DiffusionDirectionality": "NONE" if b == 0 else ("ISOTROPIC" if v == 7 else "DIRECTIONAL")}
                  for v, b in enumerate(bvals)]
    for v in range(1, 7):
        per_volume[v]["DiffusionGradientOrientation"] = list(map(float, DIRS[v - 1]))
    _write_classic(tmp_path, vols, per_volume, description="DWI_TRA", series_number=7,
                   image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"))
    kinds = [s.attributes["ScanKind"] for s in load_study(tmp_path).scans]
    assert kinds == ["DWI b=0", "DWI b=1000 (trace of 6 directions), type DIRECTIONAL",
                     "DWI b=1000 (trace), type ISOTROPIC"]
    scans = load_study(tmp_path).scans
    np.testing.assert_allclose(scans[1].voxels, np.mean(vols[1:7], axis=0), rtol=1e-5)
    np.testing.assert_allclose(scans[2].voxels, vols[7], rtol=1e-6)
