"""Bad input never crashes the loader: the good series load, every bad item is named with its reason."""
import os

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from permissions import as_another_user, lock, remove, world_traversable_dir
from pydicom.data import get_testdata_file

from hlip_engine import Scan, StudyLoadError, discover, load_study
from hlip_engine.io import write_dicom_series

STUDY = "1.2.826.0.1.3680043.8.498.99"


def _affine():
    a = np.diag([0.8, 0.8, 2.0, 1.0])
    a[:3, 3] = (-10.0, -12.0, 30.0)
    return a


def _good_series(folder, n=8, series_number=2, value=None, size=(12, 10)):
    vox = np.random.default_rng(series_number).integers(-1000, 1500, size=(n, *size)).astype(np.float32)
    if value is not None:
        vox[:] = value
    paths = write_dicom_series(Scan(vox, _affine(), modality="CT", description=f"series {series_number}"),
                               folder, study_uid=STUDY, series_number=series_number)
    return vox, paths


def _reasons(study):
    return {os.path.basename(item.split(" (")[0]): why for item, why in study.skipped}


def test_truncated_files_and_non_dicom_files_are_skipped(tmp_path):
    vox, paths = _good_series(tmp_path / "ct")
    _good_series(tmp_path / "mr", series_number=3)
    data = paths[-1].read_bytes()
    paths[-1].write_bytes(data[: len(data) - 100])  # cut inside the pixel data
    mr = sorted((tmp_path / "mr").iterdir())
    mr[0].write_bytes(mr[0].read_bytes()[:300])  # cut inside the header
    (tmp_path / "README.txt").write_text("exported by PACS\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + os.urandom(200))
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)

    study = load_study(tmp_path)
    reasons = _reasons(study)
    assert "truncated" in reasons[paths[-1].name]
    assert "not a DICOM file" in reasons["README.txt"] and "not a DICOM file" in reasons[".DS_Store"]
    assert reasons["empty.dcm"] == "empty file"
    assert reasons["notes.dcm"].startswith(("unreadable DICOM header", "not a usable DICOM object"))
    assert reasons[mr[0].name].startswith("unreadable DICOM header") or "no pixel data" in reasons[mr[0].name]
    ct = next(s for s in study.scans if s.series_number == 2)
    np.testing.assert_array_equal(ct.voxels, vox[:-1])  # the truncated last slice is dropped, not invented
    assert any(s.series_number == 3 for s in study.scans)


def test_missing_pixel_data_and_inconsistent_sizes(tmp_path):
    vox, paths = _good_series(tmp_path)
    ds = pydicom.dcmread(paths[3])
    del ds.PixelData
    ds.save_as(paths[3])
    ds = pydicom.dcmread(paths[5])
    ds.Rows, ds.Columns = 6, 20  # same byte count, different shape: must not be stacked
    ds.save_as(paths[5])
    study = load_study(tmp_path)
    (scan,) = study.scans
    reasons = " | ".join(f"{os.path.basename(i)}: {w}" for i, w in study.skipped)
    assert f"{paths[3].name}: no pixel data" in reasons
    assert "[6x20] (1 images)" in reasons and "too few slices" in reasons  # the odd-sized image is its own stack
    assert scan.shape == (8, 12, 10)  # two slices missing -> interpolated, and said so
    assert any("2 missing slice" in w for w in scan.attributes["warnings"])
    np.testing.assert_array_equal(scan.voxels[0], vox[0])


def test_undecodable_transfer_syntax_is_skipped_by_name(tmp_path):
    vox, paths = _good_series(tmp_path / "good")
    _, bad = _good_series(tmp_path / "bad", series_number=4)
    for p in bad:  # claim JPEG 2000 but keep raw bytes: no decoder can read them
        ds = pydicom.dcmread(p)
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
        ds.save_as(p)
    lossy12 = tmp_path / "nm" / "JPEG-lossy.dcm"  # a real file whose 12-bit JPEG no installed plugin decodes
    lossy12.parent.mkdir()
    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm", download=False))
    ds.StudyInstanceUID = STUDY  # filed into our study, as a PACS export would
    ds.save_as(lossy12)
    study = load_study(tmp_path, keep_secondary_capture=True, min_slices=1)
    kept = {s.series_number: s for s in study.scans}
    assert list(kept) == [2]
    np.testing.assert_array_equal(kept[2].voxels, vox)
    decode_failures = [item for item, why in study.skipped if "cannot decode pixel data" in why]
    assert len(decode_failures) == len(bad) + 1 and str(lossy12) in decode_failures


def test_empty_and_missing_folders_raise_a_clear_error(tmp_path):
    with pytest.raises(StudyLoadError, match="no DICOM study found"):
        load_study(tmp_path)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(StudyLoadError, match=r"no DICOM study found \(1 unreadable or non-DICOM files"):
        load_study(tmp_path)
    with pytest.raises(StudyLoadError, match="no such file or folder"):
        load_study(tmp_path / "nope")
    assert discover(tmp_path) == []


def test_unreadable_file_and_folder_are_reported():
    """Real permissions (the block runs as another user, see tests/permissions.py): a file and a series folder
    without read rights are skipped with the reason; the readable slices load."""
    root = world_traversable_dir()
    try:
        vox, paths = _good_series(root / "ct")
        _good_series(root / "locked", series_number=5)
        for p in (root / "ct").iterdir():
            p.chmod(0o644)
        lock(paths[0])
        lock(root / "locked")
        with as_another_user():
            study = load_study(root)
        reasons = dict(study.skipped)
        assert reasons[str(paths[0])] == "no permission to read it"
        assert reasons[str(root / "locked")] == "no permission to list it"
        (scan,) = study.scans
        np.testing.assert_array_equal(scan.voxels, vox[1:])
        with as_another_user(), pytest.raises(StudyLoadError, match="no permission to list it"):
            load_study(root / "locked")
    finally:
        remove(root)


def test_symlink_loops_end_and_duplicates_are_not_stacked_twice(tmp_path):
    vox, paths = _good_series(tmp_path / "study" / "ct")
    os.symlink(tmp_path / "study", tmp_path / "study" / "ct" / "loop")  # study/ct/loop -> study
    os.symlink(paths[2], tmp_path / "study" / "alias.dcm")  # the same image reached twice
    os.symlink(tmp_path / "missing", tmp_path / "study" / "dangling")
    study = load_study(tmp_path / "study")
    (scan,) = study.scans
    np.testing.assert_array_equal(scan.voxels, vox)
    reasons = " | ".join(why for _, why in study.skipped)
    assert "symbolic link loop" in reasons and "same SOPInstanceUID" in reasons
    assert "broken symbolic link" in reasons


# --- property: any byte damage ends in a Study or a StudyLoadError, never another exception -----------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine")
    _good_series(folder, n=4, size=(8, 8))
    write_dicom_series(Scan(np.ones((3, 8, 8), np.float32), _affine(), modality="MR"), folder / "rle",
                       study_uid=STUDY, series_number=7, transfer_syntax="1.2.840.10008.1.2.5")
    return folder


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bytes_never_crash(pristine, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("mutated")
    files = sorted(p for p in pristine.rglob("*.dcm"))
    for src in files:
        raw = bytearray(src.read_bytes())
        n_mut = data.draw(st.integers(0, 6))
        for _ in range(n_mut):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        dst = folder / src.relative_to(pristine)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(bytes(raw))
    try:
        study = load_study(folder)
    except StudyLoadError:
        return
    for scan in study.scans:
        assert scan.voxels.ndim == 3 and scan.voxels.dtype == np.float32
        assert np.all(np.isfinite(scan.affine))


def test_a_decoder_panic_is_one_bad_slice_not_a_crash(tmp_path):
    """pylibjpeg-rle (Rust) panics on some corrupt RLE data with pyo3's PanicException, a BaseException that
    an ``except Exception`` lets through (found by test_mutated_bytes_never_crash): the study still loads,
    the slice is replaced and the reason is kept."""
    import random

    vox = np.random.default_rng(0).integers(0, 300, size=(6, 16, 16)).astype(np.int16)
    write_dicom_series(Scan(vox, np.eye(4), modality="MR"), tmp_path / "s", study_uid=STUDY, series_number=7,
                       transfer_syntax="1.2.840.10008.1.2.5")
    victim = sorted((tmp_path / "s").glob("*.dcm"))[2]
    raw = victim.read_bytes()
    start = raw.rfind(b"\xe0\x7f\x10\x00")  # the pixel data element
    rng = random.Random(0)
    for _ in range(3000):  # corrupt the RLE stream until the decoder panics (a few tries)
        mutated = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randint(start, len(mutated) - 1)] = rng.randint(0, 255)
        victim.write_bytes(bytes(mutated))
        try:
            _ = pydicom.dcmread(victim).pixel_array
        except Exception:  # noqa: BLE001 - an ordinary decoder error: not the case under test
            continue
        except BaseException as e:  # noqa: BLE001
            assert type(e).__name__ == "PanicException"
            break
    else:
        pytest.fail("no corrupt RLE stream made the decoder panic")
    study = load_study(tmp_path)
    assert len(study.scans) == 1 and study.scans[0].shape[0] >= 5
    assert any(item == str(victim) and "cannot decode pixel data (PanicException" in why
               for item, why in study.skipped), study.skipped
