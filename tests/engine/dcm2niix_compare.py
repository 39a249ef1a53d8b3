"""Compare our scans with dcm2niix's NIfTI in patient space (the reference converter, PyPI ``dcm2niix``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from hlip_engine.study import Scan

DCM2NIIX = Path(sys.executable).parent / "dcm2niix"
NIBABEL_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def run_dcm2niix(folder: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "y", "-f", "%s_%d_%e", "-o", str(out), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(out.glob("*.nii"))


def agree_with_nifti(scan: Scan, nii: Path, volumes=None, n: int = 3000, seed: int = 0) -> float:
    """Largest residual (relative to the signal range) of one linear fit between our voxels and dcm2niix's,
    sampled at the same patient-space points. ``volumes``: the 4-D volumes whose mean our scan is."""
    img = nib.load(nii)
    data = img.get_fdata()
    if data.ndim == 4:
        data = data[..., list(range(data.shape[3])) if volumes is None else list(volumes)].mean(axis=-1)
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, m, n) for m in scan.shape], axis=1)  # (slice, row, column)
    lps = (scan.affine @ np.c_[idx[:, ::-1], np.ones(n)].T)[:3].T
    ijk = (np.linalg.inv(img.affine) @ np.c_[lps * [-1, -1, 1], np.ones(n)].T)[:3].T  # LPS -> RAS -> voxel
    near = np.round(ijk)
    assert np.max(np.abs(ijk - near)) < 0.01, "voxel centres do not coincide with dcm2niix's"
    near = near.astype(int)
    assert np.all((near >= 0) & (near < data.shape[:3])), "sampled voxels fall outside dcm2niix's volume"
    theirs = data[near[:, 0], near[:, 1], near[:, 2]]
    ours = scan.voxels[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    design = np.c_[ours, np.ones(n)]
    coef, *_ = np.linalg.lstsq(design, theirs, rcond=None)
    assert coef[0] > 0
    return float(np.max(np.abs(theirs - design @ coef)) / (np.ptp(theirs) or 1.0))
