"""Whole studies written as real DICOM by pydicom: grouping, splitting, ordering, geometry, skip reasons."""
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hlip_engine import Scan, StudyLoadError, discover, load_study
from hlip_engine.io import write_dicom_series
from hlip_engine.io.dicom_write import write_secondary_capture
from hlip_engine.io.sample_studies import write_mni_study

STUDY = "1.2.826.0.1.3680043.8.498.77"


def _affine(spacing=(1.0, 1.0, 2.0), origin=(-20.0, -30.0, 10.0), slice_vector=None):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    if slice_vector is not None:
        a[:3, 2] = slice_vector
    return a


def _linear_field(shape, affine, weights=(1.0, 2.0, 3.0), offset=500.0):
    """Voxel values that are a linear function of LPS position: any correct resampling keeps them exact."""
    s, r, c = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    idx = np.stack([c, r, s, np.ones_like(c)], axis=-1).reshape(-1, 4).T
    world = (affine @ idx)[:3].T.reshape(*shape, 3)
    return (world @ np.asarray(weights) + offset).astype(np.float32)


def _world_value_error(scan: Scan, weights=(1.0, 2.0, 3.0), offset=500.0, margin=2):
    expected = _linear_field(scan.shape, scan.affine, weights, offset)
    inner = tuple(slice(margin, n - margin) for n in scan.shape)
    return float(np.max(np.abs(scan.voxels[inner] - expected[inner])))


def _edit(paths, fn):
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        fn(i, ds)
        ds.save_as(p)


# --- a realistic multi-series brain MRI (nilearn's MNI152) -------------------------------------------
@pytest.fixture(scope="module")
def mni_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("mni")
    written = write_mni_study(root)
    return root, written


def test_mni_study_axial_sagittal_and_localizer(mni_study):
    root, written = mni_study
    study = load_study(root)
    assert study.modality == "MR" and study.date == "20240315" and study.description == "MRI BRAIN"
    assert [(s.series_number, s.orientation) for s in study.scans] == [(2, "axial"), (3, "sagittal")]
    axial, sagittal = study.scans
    np.testing.assert_array_equal(axial.voxels, written["axial"].voxels)
    np.testing.assert_array_equal(sagittal.voxels, written["sagittal"].voxels)
    np.testing.assert_allclose(axial.affine, written["axial"].affine, atol=1e-4)
    np.testing.assert_allclose(sagittal.affine, written["sagittal"].affine, atol=1e-4)
    assert axial.attributes["EchoTime"] == 2.5 and axial.attributes["SequenceName"] == "tfl3d1"
    assert axial.attributes["MagneticFieldStrength"] == 3.0
    assert sagittal.attributes["ImageType"] == ["DERIVED", "SECONDARY", "MPR"]
    reasons = dict(study.skipped)
    assert any("localizer" in why for why in reasons.values()) and len(study.skipped) == 1


def test_mni_known_voxel_lands_on_the_same_lps_point_in_both_reformats(mni_study):
    root, _ = mni_study
    axial, sagittal = load_study(root).scans
    for idx in [(40, 60, 50), (10, 20, 30), (70, 90, 80)]:
        point = axial.world(idx)
        c, r, s, _ = np.linalg.inv(sagittal.affine) @ np.append(point, 1.0)
        sag_idx = tuple(int(round(v)) for v in (s, r, c))
        np.testing.assert_allclose((s, r, c), sag_idx, atol=1e-6)  # lands exactly on a voxel centre
        np.testing.assert_allclose(sagittal.world(sag_idx), point, atol=1e-6)
        assert axial.voxels[idx] == sagittal.voxels[sag_idx]
    # The anatomy: MNI's origin (anterior commissure, LPS 0,0,0) lies inside the brain; the corner is air.
    c, r, s, _ = np.round(np.linalg.inv(axial.affine) @ np.array([0.0, 0.0, 0.0, 1.0])).astype(int)
    assert axial.voxels[s, r, c] > 0.2 * axial.voxels.max() and axial.voxels[0, 0, 0] == 0


def test_discover_lists_the_study_from_headers(mni_study):
    root, _ = mni_study
    (ref,) = discover(root)
    assert ref.kind == "dicom" and ref.n_series == 3 and ref.modality == "MR" and ref.date == "20240315"
    assert len(ref.files) == 95 + 99 + 3
    assert len(load_study(ref).scans) == 2


# --- slice order and geometry ----------------------------------------------------------------------
def test_slices_ordered_by_position_not_instance_number_or_file_name(tmp_path):
    aff = _affine(slice_vector=(0.0, 0.0, -2.0))  # written head-to-feet: loader sorts along the normal
    vox = _linear_field((9, 6, 7), aff)
    paths = write_dicom_series(Scan(vox, aff, modality="CT"), tmp_path, study_uid=STUDY, series_number=4)
    order = np.random.default_rng(0).permutation(len(paths))
    _edit(paths, lambda i, ds: setattr(ds, "InstanceNumber", int(order[i]) + 1))
    scan = load_study(tmp_path).scans[0]
    assert scan.affine[2, 2] == pytest.approx(2.0)  # slice axis points along +normal (I -> S)
    np.testing.assert_allclose(scan.voxels, vox[::-1], atol=0.51)
    assert _world_value_error(scan) <= 0.51


def test_instance_number_fallback_without_positions(tmp_path):
    vox = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    paths = write_dicom_series(Scan(vox, _affine(), modality="CT"), tmp_path, study_uid=STUDY, series_number=1)
    def drop_geometry(i, ds):
        del ds.ImagePositionPatient
        ds.InstanceNumber = 5 - i  # reversed acquisition order
    _edit(paths, drop_geometry)
    scan = load_study(tmp_path).scans[0]
    np.testing.assert_array_equal(scan.voxels, vox[::-1])
    assert any("InstanceNumber" in w for w in scan.attributes["warnings"])


def test_one_missing_slice_is_interpolated_and_reported(tmp_path):
    aff = _affine()
    vox = _linear_field((10, 5, 6), aff)
    paths = write_dicom_series(Scan(vox, aff, modality="CT"), tmp_path, study_uid=STUDY, series_number=2)
    paths[4].unlink()
    scan = load_study(tmp_path).scans[0]
    assert scan.shape == (10, 5, 6)
    assert any("1 missing slice" in w for w in scan.attributes["warnings"])
    np.testing.assert_allclose(scan.voxels[4], (vox[3] + vox[5]) / 2, atol=0.51)
    assert _world_value_error(scan, margin=1) <= 0.51


def test_large_gap_keeps_the_largest_contiguous_part(tmp_path):
    vox = _linear_field((14, 4, 4), _affine())
    paths = write_dicom_series(Scan(vox, _affine(), modality="CT"), tmp_path, study_uid=STUDY, series_number=2)
    for p in paths[3:7]:
        p.unlink()
    study = load_study(tmp_path)
    assert study.scans[0].shape == (7, 4, 4)  # slices 7..13
    gap_items = [item for item, why in study.skipped if "gap" in why]
    assert sorted(gap_items) == sorted(str(p) for p in paths[:3])


def test_non_uniform_spacing_is_resampled(tmp_path):
    aff = _affine(spacing=(1.0, 1.0, 1.0))
    vox = np.zeros((8, 6, 6), np.float32)
    paths = write_dicom_series(Scan(vox, aff, modality="MR"), tmp_path, study_uid=STUDY, series_number=7)
    z = np.array([0.0, 1.0, 2.0, 3.0, 4.6, 5.6, 6.6, 7.6]) + 10.0
    def move(i, ds):
        ds.ImagePositionPatient = [-20.0, -30.0, float(z[i])]
        field = _linear_field((1, 6, 6), _affine(origin=(-20.0, -30.0, z[i])))[0]
        ds.PixelData = np.round(field).astype(np.uint16).tobytes()
    _edit(paths, move)
    scan = load_study(tmp_path).scans[0]
    assert any("non-uniform" in w for w in scan.attributes["warnings"])
    assert scan.spacing[0] == pytest.approx(1.0) and scan.shape[0] == 8
    assert _world_value_error(scan, margin=1) <= 0.51


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path):
    tilt = np.radians(15.0)
    aff = _affine(spacing=(1.0, 1.0, 1.0), slice_vector=(0.0, 2.5 * np.tan(tilt), 2.5))
    vox = _linear_field((12, 24, 20), aff)
    write_dicom_series(Scan(vox, aff, modality="CT"), tmp_path, study_uid=STUDY, series_number=3,
                       extra={"GantryDetectorTilt": 15.0})
    scan = load_study(tmp_path).scans[0]
    assert scan.attributes["GantryTiltDegrees"] == pytest.approx(np.degrees(np.arctan(np.tan(tilt))), abs=0.05)
    np.testing.assert_allclose(scan.direction, np.eye(3), atol=1e-6)  # orthogonal, slices along the normal
    assert scan.spacing[0] == pytest.approx(2.5)
    # Inside the field of view the values still match their LPS positions (the tilt shift was undone).
    expected = _linear_field(scan.shape, scan.affine)
    shift_rows = int(np.ceil(11 * 2.5 * np.tan(tilt)))
    inner = (slice(1, -1), slice(shift_rows + 1, -2), slice(1, -1))
    assert np.max(np.abs(scan.voxels[inner] - expected[inner])) <= 0.51


# --- one series, several volumes ---------------------------------------------------------------------
def test_multi_echo_series_is_split_by_echo(tmp_path):
    uid = generate_uid()
    for echo, te in ((1, 12.0), (2, 95.0)):
        scan = Scan(np.full((4, 6, 6), 100.0 * echo, np.float32), _affine(), modality="MR",
                    description="DE TSE", series_uid=uid)
        write_dicom_series(scan, tmp_path / f"echo{echo}", study_uid=STUDY, series_number=5,
                           extra={"EchoTime": te, "EchoNumbers": echo})
    scans = load_study(tmp_path).scans
    assert len(scans) == 2 and {s.series_uid for s in scans} == {uid}
    assert sorted(float(s.voxels.mean()) for s in scans) == [100.0, 200.0]
    assert all("echo" in s.description for s in scans)


def test_repeated_acquisitions_at_the_same_positions_are_separate_scans(tmp_path):
    uid = generate_uid()
    for acq in (1, 2):
        scan = Scan(np.full((4, 6, 6), 10.0 * acq, np.float32), _affine(), modality="MR",
                    description="DWI", series_uid=uid)
        write_dicom_series(scan, tmp_path / f"acq{acq}", study_uid=STUDY, series_number=6,
                           extra={"AcquisitionNumber": acq})
    scans = load_study(tmp_path).scans
    assert sorted(float(s.voxels.mean()) for s in scans) == [10.0, 20.0]
    assert all(s.shape == (4, 6, 6) for s in scans)


def test_series_mixing_planes_splits_into_scans(tmp_path):
    from hlip_engine.io.sample_studies import reformat

    uid = generate_uid()
    base = Scan(_linear_field((12, 12, 12), _affine(spacing=(1, 1, 1))), _affine(spacing=(1, 1, 1)),
                modality="MR", description="T1", series_uid=uid)
    for plane in ("axial", "coronal"):
        write_dicom_series(reformat(base, plane, "T1"), tmp_path / plane, study_uid=STUDY, series_number=8)
    scans = load_study(tmp_path).scans
    assert sorted(s.orientation for s in scans) == ["axial", "coronal"]
    for s in scans:
        assert _world_value_error(s, margin=0) <= 0.51


# --- skip reasons ------------------------------------------------------------------------------------
def _write_sr(path, study_uid):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.SeriesNumber = "SR", 99
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_non_images_screenshots_pilots_and_short_stacks_are_skipped_with_reasons(tmp_path):
    write_dicom_series(Scan(np.ones((6, 8, 8), np.float32), _affine(), modality="CT", description="Head"),
                       tmp_path / "ct", study_uid=STUDY, series_number=2)
    _write_sr(tmp_path / "report.dcm", STUDY)
    write_secondary_capture(np.ones((16, 16)), tmp_path / "sc.dcm", study_uid=STUDY, series_number=300)
    write_dicom_series(Scan(np.ones((2, 8, 8), np.float32), _affine(), modality="CT", description="Dose"),
                       tmp_path / "short", study_uid=STUDY, series_number=9)
    # A 3-plane pilot with neither LOCALIZER in ImageType nor a telling description.
    from hlip_engine.io.sample_studies import reformat

    pilot_uid = generate_uid()
    cube = Scan(np.ones((9, 9, 9), np.float32), _affine(spacing=(1, 1, 1)), modality="CT")
    for plane in ("axial", "coronal", "sagittal"):
        part = reformat(cube, plane, "ExamCard 1")
        to_slice_3 = np.eye(4)
        to_slice_3[2, 3] = 3
        part = Scan(part.voxels[3:6], part.affine @ to_slice_3, modality="CT",
                    description="ExamCard 1", series_uid=pilot_uid)
        write_dicom_series(part, tmp_path / f"pilot_{plane}", study_uid=STUDY, series_number=1)

    study = load_study(tmp_path)
    assert [s.description for s in study.scans] == ["Head"]
    reasons = " | ".join(why for _, why in study.skipped)
    assert "structured report" in reasons
    assert "secondary capture" in reasons
    assert "too few slices (2 < 3)" in reasons
    assert "multi-plane localizer" in reasons
    assert len(study.skipped) == 4
    # Options are honoured: a lower minimum keeps the short stack.
    assert len(load_study(tmp_path, min_slices=2).scans) == 2
    with pytest.raises(ValueError, match="unknown study loading option"):
        load_study(tmp_path, min_slice=2)


def test_several_studies_under_one_folder(tmp_path):
    for k, (desc, date) in enumerate((("CT HEAD", "20240101"), ("MRI BRAIN", "20240202"))):
        write_dicom_series(Scan(np.full((3, 4, 4), k, np.float32), _affine(), modality="CT"),
                           tmp_path / f"study{k}", study_uid=f"1.2.3.{k}", series_number=1,
                           study_description=desc, study_date=date)
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path)
    assert "holds 2 studies" in str(err.value) and "1.2.3.0" in str(err.value) and "1.2.3.1" in str(err.value)
    refs = discover(tmp_path)
    assert [(r.uid, r.description, r.date) for r in refs] == [("1.2.3.0", "CT HEAD", "20240101"),
                                                             ("1.2.3.1", "MRI BRAIN", "20240202")]
    assert [float(load_study(r).scans[0].voxels.mean()) for r in refs] == [0.0, 1.0]
