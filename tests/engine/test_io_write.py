"""write_dicom_series / write_enhanced_series: real DICOM files that read back to the same voxels and affine."""
import numpy as np
import pydicom
import pytest

from hlip_engine import PatientInfo, Scan, load_study
from hlip_engine.io import write_dicom_series, write_enhanced_series

RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _oblique_affine(spacing=(0.8, 0.9, 2.5), origin=(-90.0, -110.0, -40.0), degrees=17.0):
    """(column, row, slice) -> LPS with a rotation about the L axis, so no axis is trivially aligned."""
    t = np.radians(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _ct_scan(shape=(6, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 3000, size=shape).astype(np.float32)
    return Scan(hu, _oblique_affine(), modality="CT", description="CT head")


def test_ct_round_trip_is_exact_in_hu_and_geometry(tmp_path):
    scan = _ct_scan()
    paths = write_dicom_series(scan, tmp_path / "ct", study_uid="1.2.826.0.1.3680043.8.498.1", series_number=3,
                               study_description="CT HEAD", study_date="20240102")
    assert len(paths) == scan.shape[0]
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.pixel_array.dtype == np.int16
    assert ds.PixelRepresentation == 1 and "RescaleSlope" in ds and "RescaleIntercept" in ds

    study = load_study(tmp_path / "ct")
    assert study.date == "20240102" and study.description == "CT HEAD" and study.modality == "CT"
    (got,) = study.scans
    assert got.series_number == 3 and got.description == "CT head"
    np.testing.assert_array_equal(got.voxels, scan.voxels)
    np.testing.assert_allclose(got.affine, scan.affine, atol=1e-4)
    np.testing.assert_allclose(got.spacing, (2.5, 0.9, 0.8), atol=1e-5)


def test_mr_float_values_kept_within_the_rescale_step(tmp_path):
    rng = np.random.default_rng(1)
    vox = rng.uniform(0.0, 1234.5, size=(5, 16, 12)).astype(np.float32)
    scan = Scan(vox, _oblique_affine((1.0, 1.0, 3.0)), modality="MR", description="T2 FLAIR")
    paths = write_dicom_series(scan, tmp_path, study_uid="1.2.3.4", series_number=5,
                               extra={"EchoTime": 90.0, "RepetitionTime": 9000.0, "SequenceName": "tir2d1"})
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.pixel_array.dtype == np.uint16
    slope = float(ds.RescaleSlope)
    got = load_study(tmp_path).scans[0]
    assert np.max(np.abs(got.voxels - vox)) <= slope / 2 + 1e-3
    assert got.attributes["EchoTime"] == 90.0 and got.attributes["SequenceName"] == "tir2d1"


@pytest.mark.parametrize("transfer_syntax", [RLE, J2K_LOSSLESS])
def test_compressed_transfer_syntaxes_round_trip(tmp_path, transfer_syntax):
    scan = _ct_scan(shape=(4, 32, 32), seed=2)  # JPEG 2000 needs tiles of at least 32 px
    paths = write_dicom_series(scan, tmp_path, study_uid="1.2.3.5", series_number=1,
                               transfer_syntax=transfer_syntax)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    got = load_study(tmp_path).scans[0]
    np.testing.assert_array_equal(got.voxels, scan.voxels)
    assert got.attributes["TransferSyntaxUID"] == transfer_syntax


def test_enhanced_multiframe_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    vox = rng.integers(0, 4000, size=(7, 12, 10)).astype(np.float32)
    scan = Scan(vox, _oblique_affine((0.5, 0.6, 1.2), degrees=-25.0), modality="MR", description="3D T1")
    path = write_enhanced_series(scan, tmp_path / "t1.dcm", study_uid="1.2.3.6", series_number=2)
    assert pydicom.dcmread(path).NumberOfFrames == 7
    got = load_study(tmp_path).scans[0]
    np.testing.assert_array_equal(got.voxels, vox)
    np.testing.assert_allclose(got.affine, scan.affine, atol=1e-4)
    assert got.attributes["NumberOfFrames"] == 7


def test_patient_identifiers_reach_only_study_patient(tmp_path):
    patient = PatientInfo(name="Doe^Jane", id="MRN123", birth_date="19700101", sex="F")
    write_dicom_series(_ct_scan(shape=(3, 8, 8)), tmp_path, study_uid="1.2.3.7", series_number=1, patient=patient)
    study = load_study(tmp_path)
    assert study.patient.name == "Doe^Jane" and study.patient.id == "MRN123"
    text = repr(study) + repr(study.scans) + repr(study.scans[0].attributes) + repr(study.skipped)
    assert "Doe" not in text and "MRN123" not in text and "19700101" not in text
