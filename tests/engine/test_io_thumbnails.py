"""A search hit's thumbnail: the middle image of the largest series, windowed; DICOM written by pydicom and
NIfTI by nibabel, read back; nothing shown (never an error) for what is not a study."""
from __future__ import annotations

import nibabel as nib
import numpy as np

from hlip_engine.io.dicom_write import write_dicom_series
from hlip_engine.io.thumbnails import study_thumbnail
from hlip_engine.study import Scan

UID = "1.2.826.0.1.3680043.8.498.777"


def _marked(n=15, size=128, value=900.0):
    """n slices; the middle one has a bright square top-left, every other slice one bottom-right."""
    vox = np.full((n, size, size), 100.0, dtype=np.float32)
    vox[:, 96:120, 96:120] = value
    mid = n // 2
    vox[mid, 96:120, 96:120] = 100.0
    vox[mid, 8:32, 8:32] = value
    return vox


def test_dicom_thumbnail_is_the_middle_slice_of_the_largest_series(tmp_path):
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    write_dicom_series(Scan(_marked(), affine, modality="MR"), tmp_path / "big", study_uid=UID, series_number=2)
    small = np.zeros((3, 128, 128), dtype=np.float32)
    write_dicom_series(Scan(small, affine, modality="MR"), tmp_path / "loc", study_uid=UID, series_number=1)
    img = study_thumbnail(tmp_path)
    assert img.dtype == np.uint8 and img.shape == (64, 64)
    assert img[4:16, 4:16].mean() > 200  # the middle slice's mark (top-left) ...
    assert img[48:60, 48:60].mean() < 50  # ... not the other slices'
    assert study_thumbnail(next((tmp_path / "big").iterdir())).shape == (64, 64)  # a file stands for its folder


def test_ct_is_windowed_in_hounsfield_units(tmp_path):
    vox = np.full((9, 64, 64), -1000.0, dtype=np.float32)  # air
    vox[:, 16:48, 16:48] = 40.0  # brain-like soft tissue: the centre of the brain window
    write_dicom_series(Scan(vox, np.eye(4), modality="CT"), tmp_path / "ct", study_uid=UID, series_number=1,
                       study_description="CT HEAD")
    img = study_thumbnail(tmp_path)
    assert img.shape == (64, 64)
    assert abs(int(img[32, 32]) - 128) <= 2 and img[2, 2] == 0


def test_nifti_thumbnail_and_no_thumbnail_for_the_rest(tmp_path):
    data = np.zeros((40, 40, 11), dtype=np.float32)
    data[:, :, 5] = np.arange(40, dtype=np.float32)[:, None]  # the middle axial slice ramps along x
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "t1.nii.gz")
    img = study_thumbnail(tmp_path / "t1.nii.gz")
    assert img.shape == (40, 40) and img.max() > 200 and img.min() < 20
    assert study_thumbnail(tmp_path) is not None  # a folder of NIfTI files
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    assert study_thumbnail(tmp_path / "notes") is None
    assert study_thumbnail(tmp_path / "missing") is None
