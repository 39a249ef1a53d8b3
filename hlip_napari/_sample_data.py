"""Sample data: a real brain MRI (nilearn's MNI152 T1 template, shipped with nilearn) as a 3-series study.

The template is written as real DICOM (axial, sagittal and coronal series, as a scanner exports
reformats) into the user's cache folder once, then opened through the same engine path as any study.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hlip_engine.study import Scan, Study

from ._layers import study_layer_data

STUDY_UID = "1.2.826.0.1.3680043.8.498.7402100000000000000000001"
MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# plane -> for (slice, row, column): which RAS data axis (0=x R, 1=y A, 2=z S), and whether reversed.
# rows of sagittal/coronal run head -> feet and columns of axial/coronal run patient right -> left,
# as DICOM reformats are usually stored.
PLANES = {
    "axial": ((2, False), (1, True), (0, True)),
    "sagittal": ((0, True), (2, True), (1, True)),
    "coronal": ((1, True), (2, True), (0, True)),
}


def mni_scan(plane: str, data: np.ndarray, ras_affine: np.ndarray, series_number: int, description: str) -> Scan:
    """The RAS template volume as a scan stored in ``plane``, with its exact LPS geometry."""
    axes = PLANES[plane]
    order = [a for a, _ in axes]
    voxels = np.transpose(data, order)
    voxels = voxels[tuple(slice(None, None, -1) if rev else slice(None) for _, rev in axes)]
    # m: scan (column, row, slice) -> data (i, j, k)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for pos, (data_axis, rev) in enumerate(axes):  # pos: 0 slice, 1 row, 2 column
        col = 2 - pos
        if rev:
            m[data_axis, col] = -1.0
            m[data_axis, 3] = data.shape[data_axis] - 1
        else:
            m[data_axis, col] = 1.0
    affine = LPS_FROM_RAS @ ras_affine @ m
    return Scan(voxels=np.ascontiguousarray(voxels, dtype=np.float32), affine=affine, modality="MR",
                description=description, series_number=series_number,
                attributes={"BodyPartExamined": "BRAIN", "ImageType": ["DERIVED", "PRIMARY", plane.upper()]},
                source="nilearn MNI152 template")


def mni_t1_2mm() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's 1 mm MNI152 T1 file, averaged to 2 mm blocks (RAS data, RAS affine).

    Read with nibabel straight from nilearn's package data: importing ``nilearn.datasets`` costs ~10 s.
    """
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sample study needs nilearn (its MNI152 template is the anatomy)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / MNI_T1
    img = nib.load(str(path))
    a = np.asarray(img.dataobj, dtype=np.float32)
    x, y, z = (n // 2 * 2 for n in a.shape)
    a = a[:x, :y, :z].reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))
    affine = np.asarray(img.affine, dtype=np.float64).copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, 0.5)  # a 2x2x2 block's centre
    affine[:3, :3] *= 2.0
    return a * (1000.0 / max(float(a.max()), 1e-6)), affine


def mni_study() -> Study:
    """The MNI152 T1 template (2 mm) as a study of three reformats, built in memory."""
    data, ras_affine = mni_t1_2mm()
    scans = [
        mni_scan("axial", data, ras_affine, 1, "T1 AX (MNI152)"),
        mni_scan("sagittal", data, ras_affine, 2, "T1 SAG (MNI152)"),
        mni_scan("coronal", data, ras_affine, 3, "T1 COR (MNI152)"),
    ]
    return Study(uid=STUDY_UID, scans=scans, description="Sample brain MRI (MNI152 template)",
                 date="20250101", modality="MR", source="nilearn MNI152 template")


def sample_folder() -> Path:
    env = os.environ.get("HLIP_NAPARI_CACHE_DIR")
    if env:
        return Path(env) / "sample-mni152"
    import platformdirs

    return Path(platformdirs.user_cache_dir("hlip-napari")) / "sample-mni152"


def write_sample_study(folder: Path | None = None) -> Path:
    """Write the sample study as DICOM (once); returns the study folder."""
    from hlip_engine.io import write_dicom_series

    folder = Path(folder) if folder is not None else sample_folder()
    done = folder.with_name(folder.name + ".complete")  # beside the study, not in it
    if done.exists() and folder.is_dir():
        return folder
    study = mni_study()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".part-", dir=folder.parent))
    for scan in study.scans:
        plane = scan.attributes["ImageType"][2]
        write_dicom_series(scan, tmp / f"series{scan.series_number}", study_uid=study.uid,
                           series_number=scan.series_number, study_description=study.description,
                           study_date=study.date, image_type=("DERIVED", "PRIMARY", plane))
    shutil.rmtree(folder, ignore_errors=True)  # a half-written copy from an interrupted run
    os.replace(tmp, folder)
    done.write_text("ok\n")
    return folder


def sample_study() -> Study:
    """The sample study read back from DICOM through the engine; in memory if that is not possible."""
    try:
        from hlip_engine import load_study

        return load_study(write_sample_study())
    except (ImportError, OSError):
        return mni_study()


def make_sample_study() -> list[tuple]:
    """napari sample-data hook: the sample brain MRI study, one layer per series."""
    return study_layer_data(sample_study())
