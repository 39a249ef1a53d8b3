"""NIfTI files (.nii, .nii.gz) -> Study: one file = one scan; a folder of them = one study.

NIfTI stores voxels as (i, j, k) with an affine to RAS millimetres; our ``Scan`` follows DICOM/ITK:
voxels (slice, row, column) = (k, j, i) and an affine to LPS, so the first two world rows change sign.
This is what SimpleITK's reader gives (``GetArrayFromImage`` + LPS direction/origin), which is how the
official HLIP code read its NIfTI data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..study import Scan, Study, StudyLoadError
from .folders import folder_scans, path_uid

_SUFFIXES = (".nii", ".nii.gz")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _is_nifti_file(path: Path) -> bool:
    return path.name.lower().endswith(_SUFFIXES) and not path.name.startswith(".")


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and _is_nifti_file(p))


def is_nifti(path) -> bool:
    """True for a .nii / .nii.gz file, or a folder directly holding at least one. Never raises."""
    try:
        p = Path(path)
        if p.is_file():
            return _is_nifti_file(p)
        return p.is_dir() and bool(nifti_files(p))
    except OSError:
        return False


def _is_label_map(path: Path) -> bool:
    # the official HLIP data scripts skip these names: segmentations are not scans
    name = path.name.lower()
    return "seg" in name or "mask" in name


def load_nifti_scan(path, index: int = 0) -> Scan:
    """One NIfTI file -> Scan (4-D files: the first volume, noted in ``attributes["warnings"]``)."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) < 3:
            shape = tuple(shape) + (1,) * (3 - len(shape))
        warnings = []
        if len(shape) > 3:
            extra = int(np.prod(shape[3:]))
            if extra > 1:
                warnings.append(f"{extra} volumes in a {len(shape)}-D file: using the first")
            data = img.dataobj[(slice(None),) * 3 + (0,) * (len(shape) - 3)]  # scaled by the proxy
        else:
            data = np.asanyarray(img.dataobj).reshape(shape)
        voxels = np.ascontiguousarray(np.transpose(np.asarray(data, dtype=np.float32), (2, 1, 0)))
        affine = RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # nibabel raises many types for truncated / foreign files
        raise StudyLoadError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if voxels.size == 0:
        raise StudyLoadError(f"{path}: NIfTI file holds no voxels (shape {shape})")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise StudyLoadError(f"{path}: NIfTI affine is degenerate: {affine[:3].tolist()}")
    finite = voxels[np.isfinite(voxels)]
    # NIfTI has no Modality tag: a guess for recipe_for (HU air is about -1000; MR is non-negative)
    guess = "CT" if finite.size and float(finite.min()) < -500 else "MR"
    attributes = {"modality_guess": guess, "file_format": "NIfTI"}
    if warnings:
        attributes["warnings"] = warnings
    name = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
    return Scan(voxels=voxels, affine=affine, modality="", description=Path(name).stem,
                series_uid=path_uid(path), series_number=index + 1, attributes=attributes, source=str(path))


def load_nifti_study(path) -> Study:
    """A NIfTI file, or a folder of NIfTI files (one scan each, by name), as one Study.

    Files that fail to load, and label maps (names with "seg" / "mask"), go to ``Study.skipped``.
    """
    path = Path(path)
    if not path.exists():
        raise StudyLoadError(f"{path}: no such file or folder")
    if path.is_file():
        return Study(uid=path_uid(path), scans=[load_nifti_scan(path)], description=path.name,
                     source=str(path))
    scans, skipped = folder_scans(
        path, nifti_files, lambda f, i: load_nifti_scan(f, index=i), kind="NIfTI",
        none_found="no .nii / .nii.gz files in this folder",
        skip=lambda f: "label map (name contains 'seg' or 'mask'), not a scan" if _is_label_map(f) else "")
    return Study(uid=path_uid(path), scans=scans, description=path.name, skipped=skipped, source=str(path))
