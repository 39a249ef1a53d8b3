"""Real DICOM from elsewhere: pydicom's dicomdirtests (several patients, CT/MR/CR, pilots, MIPs) and the
compressed files of pydicom / pydicom-data (RLE, JPEG lossless/lossy, JPEG-LS, JPEG 2000, big endian,
enhanced multi-frame). Nothing is downloaded: ``download=False``."""
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from hlip_engine import StudyLoadError, discover, load_study
from hlip_engine.io.dicom_headers import _read_header_pydicom, read_header

DICOMDIR_TESTS = Path(os.path.dirname(get_testdata_file("DICOMDIR", download=False)))  # .../dicomdirtests


def _local(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} missing from pydicom / pydicom-data"
    return path


@pytest.fixture(scope="module")
def dicomdir_refs():
    return {r.uid: r for r in discover(DICOMDIR_TESTS)}


def test_dicomdirtests_discovers_every_study(dicomdir_refs):
    refs = list(dicomdir_refs.values())
    assert len(refs) == 7
    assert sorted(r.modality for r in refs) == ["CR", "CT", "CT", "CT", "MR", "MR", "MR"]
    assert {r.description for r in refs} >= {"Brain", "Brain-MRA", "Carotids", "XR C Spine Comp Min 4 Views",
                                              "CT, HEAD/BRAIN WO CONTRAST", "Testing File-set"}
    with pytest.raises(StudyLoadError, match="holds 7 studies"):
        load_study(DICOMDIR_TESTS)


def _by_description(refs, description):
    (ref,) = [r for r in refs.values() if r.description == description]
    return load_study(ref)


def test_dicomdirtests_ct_keeps_the_axial_series_and_skips_the_scout(dicomdir_refs):
    (ref,) = [r for r in dicomdir_refs.values() if r.source.endswith("98892001")]
    study = load_study(ref)
    (scan,) = study.scans
    assert scan.description == "SmartScore - Gated 0.5 sec" and scan.shape == (5, 16, 16)
    assert scan.orientation == "axial" and scan.spacing[0] == pytest.approx(2.5)
    assert [why for _, why in study.skipped] == ["localizer (ImageType LOCALIZER)"]
    # Slices are ordered inferior -> superior whatever their InstanceNumber (6..10 run superior -> inferior).
    z = [scan.world((k, 0, 0))[2] for k in range(5)]
    assert z == sorted(z)
    first = pydicom.dcmread(DICOMDIR_TESTS / "98892001" / "CT5N" / "3353")  # lowest slice, InstanceNumber 10
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(scan.voxels[0], hu)


def test_dicomdirtests_radiographs_pilots_and_mips_are_skipped(dicomdir_refs):
    cr = _by_description(dicomdir_refs, "XR C Spine Comp Min 4 Views")
    assert cr.scans == [] and len(cr.skipped) == 3
    assert all("2-D radiograph (CR)" in why for _, why in cr.skipped)
    mra = _by_description(dicomdir_refs, "Brain-MRA")
    reasons = sorted(why.split(" (")[0] for _, why in mra.skipped)
    assert reasons == ["localizer / scout", "localizer / scout", "projection images"]


def test_dicomdirtests_series_with_a_gap_is_reported(dicomdir_refs):
    study = _by_description(dicomdir_refs, "CT, HEAD/BRAIN WO CONTRAST")
    (scan,) = study.scans
    assert scan.shape[0] == 3 and any("gap" in w for w in scan.attributes["warnings"])
    assert [Path(item).name for item, why in study.skipped if "gap" in why] == ["17106"]


def test_dicomdir_index_file_and_empty_images_are_named(tmp_path):
    shutil.copytree(DICOMDIR_TESTS / "TINY_ALPHA", tmp_path / "TINY_ALPHA")
    study = load_study(tmp_path)
    reasons = {why for _, why in study.skipped}
    assert any("DICOMDIR" in why for why in reasons) and "no pixel data" in reasons
    assert any(item.endswith("(50 files)") for item, _ in study.skipped)


def _load_one(tmp_path, name, folder="one", **options):
    target = tmp_path / folder / name.replace(".", "_")
    target.mkdir(parents=True)
    shutil.copy(_local(name), target)
    return load_study(target, min_slices=1, **options)


@pytest.mark.parametrize("family", [
    ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm",
     "emri_small_jpeg_ls_lossless.dcm"],
    ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
     "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm"],
    ["MR2_UNCR.dcm", "MR2_J2KR.dcm"],
    ["693_UNCR.dcm", "693_J2KR.dcm"],
])
def test_compressed_and_big_endian_variants_give_identical_voxels(tmp_path, family):
    scans = [_load_one(tmp_path, name).scans[0] for name in family]
    for name, scan in zip(family[1:], scans[1:]):
        np.testing.assert_array_equal(scan.voxels, scans[0].voxels, err_msg=name)
        np.testing.assert_allclose(scan.affine, scans[0].affine, err_msg=name)
    ds = pydicom.dcmread(_local(family[0]))
    first = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)[0].astype(np.float32)
    if "RescaleSlope" in ds:
        first = first * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(scans[0].voxels[0], first)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPEG2000.dcm"])
def test_jpeg_family_decodes_like_pydicom(tmp_path, name):
    study = _load_one(tmp_path, name, keep_secondary_capture=True)
    ds = pydicom.dcmread(_local(name))
    np.testing.assert_array_equal(study.scans[0].voxels[0], ds.pixel_array.astype(np.float32))
    default = _load_one(tmp_path, name, folder="default")
    assert default.scans == [] and "secondary capture" in default.skipped[0][1]


def test_jpeg_baseline_series_decodes(tmp_path):
    """8-bit JPEG baseline (lossy, what many PACS send): encoded here with Pillow, decoded by the plugins."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    from hlip_engine import Scan
    from hlip_engine.io import write_dicom_series

    yy, xx = np.mgrid[0:32, 0:32]
    slices = [np.clip(60 + 3 * xx + 2 * yy + 10 * k, 0, 255).astype(np.uint8) for k in range(4)]
    paths = write_dicom_series(Scan(np.stack(slices).astype(np.float32), np.eye(4), modality="MR"), tmp_path,
                               study_uid="1.2.3.50", series_number=1)
    for path, img in zip(paths, slices):
        ds = pydicom.dcmread(path)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
        ds.save_as(path)
    scan = load_study(tmp_path).scans[0]
    assert scan.attributes["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
    assert np.max(np.abs(scan.voxels - np.stack(slices))) <= 4  # lossy, but close


def test_enhanced_ct_frames_carry_their_own_positions(tmp_path):
    scan = _load_one(tmp_path, "eCT_Supplemental.dcm").scans[0]
    ds = pydicom.dcmread(_local("eCT_Supplemental.dcm"), stop_before_pixels=True)
    z = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence)
    assert scan.shape[0] == 2 and scan.spacing[0] == pytest.approx(abs(z[1] - z[0]))


def test_fast_header_reader_agrees_with_pydicom_on_every_test_file():
    files = [str(p) for p in DICOMDIR_TESTS.rglob("*") if p.is_file() and not p.name.startswith("README")]
    files += [_local(n) for n in ("CT_small.dcm", "MR_small_implicit.dcm", "emri_small.dcm", "JPEG-LL.dcm",
                                  "eCT_Supplemental.dcm", "rtplan.dcm", "test-SR.dcm", "MR2_J2KR.dcm")]
    for f in files:
        fast, slow = read_header(f), _read_header_pydicom(f)
        for key in ("study_uid", "series_uid", "sop_class", "modality", "position", "orientation", "pixel_spacing",
                    "rows", "columns", "rescale_slope", "rescale_intercept", "image_type", "has_pixels",
                    "pixel_offset", "instance_number", "series_description", "attributes"):
            assert getattr(fast, key) == getattr(slow, key), (f, key)
        assert fast.patient.id == slow.patient.id
