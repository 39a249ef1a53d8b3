"""Realistic DICOM studies without patient data: reformats of a scan and an MNI152 brain MRI study.

Why: tests, benchmarks and the demo need studies that look like what a scanner exports (an axial
series, a sagittal reformat, a 3-plane localizer, all sharing one frame of reference), written as real
DICOM and read back through the same loader users get. nilearn ships the MNI152 template, so nothing
is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..study import PatientInfo, Scan

MNI152_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

# Standard DICOM plane orientations (LPS): columns of (column direction, row direction, slice normal).
PLANES = {
    "axial": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float).T,  # col L, row P, slices I->S
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T,  # col L, row I, slices A->P
    "sagittal": np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float).T,  # col P, row I, slices L->R
}


def reformat(scan: Scan, plane: str, description: str | None = None) -> Scan:
    """Exact reformat of an axis-aligned scan into a standard plane (permutation and flips, no interpolation)."""
    target = PLANES[plane]
    src_dir = scan.direction  # (3, 3) unit columns in LPS
    vol = np.asarray(scan.voxels).transpose(2, 1, 0)  # (col, row, slice) index order
    perm, flips = [], []
    for t in range(3):
        dots = src_dir.T @ target[:, t]
        a = int(np.argmax(np.abs(dots)))
        if abs(dots[a]) < 0.999:
            raise ValueError("reformat needs an axis-aligned scan")
        perm.append(a)
        flips.append(dots[a] < 0)
    new = vol.transpose(perm)
    corner = np.zeros(3)
    affine = np.eye(4)
    for t, (a, flip) in enumerate(zip(perm, flips)):
        if flip:
            new = np.flip(new, axis=t)
            corner[a] = vol.shape[a] - 1
        affine[:3, t] = scan.affine[:3, a] * (-1.0 if flip else 1.0)
    affine[:3, 3] = (scan.affine @ np.append(corner, 1.0))[:3]
    return Scan(np.ascontiguousarray(new.transpose(2, 1, 0)), affine, modality=scan.modality,
                description=description if description is not None else f"{scan.description} {plane}",
                attributes=dict(scan.attributes))


def mni_scan(resolution: int = 2) -> Scan:
    """nilearn's bundled MNI152 T1 template as an axial MR scan with scanner-like integer intensities.

    Reads the 1 mm file nilearn ships with nibabel and keeps every ``resolution``-th voxel: the same grid as
    ``nilearn.datasets.load_mni152_template(resolution=2)`` (99 x 117 x 95 at 2 mm) without its slow resampling.
    """
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")  # locate the file without importing nilearn (seconds of sklearn)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; it ships the MNI152 template used here")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / MNI152_T1_FILE
    img = nib.load(str(path))
    step = int(resolution)
    data = np.asarray(img.dataobj)[::step, ::step, ::step].astype(np.float32)  # (i, j, k), RAS affine
    ras = img.affine @ np.diag([step, step, step, 1.0])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    voxels = (data * 4.0).transpose(2, 1, 0)  # 0..1020, like a T1 in scanner units
    return reformat(Scan(voxels, lps, modality="MR", description="T1 MPRAGE"), "axial", "T1 MPRAGE axial")


def write_mni_study(out_dir: str | Path, *, study_uid: str = "1.2.826.0.1.3680043.8.498.152", resolution: int = 2,
                    transfer_syntax: str | None = None, patient: PatientInfo | None = None) -> dict[str, Scan]:
    """Write a 3-series brain MRI study: 3-plane localizer (series 1), axial T1 (2), sagittal reformat (3).

    Returns the scans written, by name ("localizer_axial", ..., "axial", "sagittal"), for checking geometry.
    """
    from pydicom.uid import generate_uid

    from .dicom_write import write_dicom_series

    out_dir = Path(out_dir)
    axial = mni_scan(resolution)
    sagittal = reformat(axial, "sagittal", "T1 MPRAGE sag MPR")
    common = dict(study_uid=study_uid, study_description="MRI BRAIN", study_date="20240315", patient=patient,
                  transfer_syntax=transfer_syntax)
    written = {"axial": axial, "sagittal": sagittal}
    loc_uid = generate_uid(entropy_srcs=[study_uid, "localizer"])
    for plane in ("axial", "coronal", "sagittal"):
        full = reformat(axial, plane)
        mid = full.shape[0] // 2
        affine = full.affine.copy()
        affine[:3, 3] = full.world((mid, 0, 0))
        loc = Scan(full.voxels[mid:mid + 1], affine, modality="MR", description="3-plane loc",
                   series_uid=loc_uid)
        write_dicom_series(loc, out_dir / "S1_localizer" / plane, series_number=1,
                           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), **common)
        written[f"localizer_{plane}"] = loc
    write_dicom_series(axial, out_dir / "S2_t1_axial", series_number=2,
                       extra={"EchoTime": 2.5, "RepetitionTime": 2300.0, "InversionTime": 900.0,
                              "SequenceName": "tfl3d1", "MagneticFieldStrength": 3.0}, **common)
    write_dicom_series(sagittal, out_dir / "S3_t1_sag", series_number=3,
                       image_type=("DERIVED", "SECONDARY", "MPR"), **common)
    return written
