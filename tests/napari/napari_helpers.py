"""Helpers for the napari tests: small real studies (DICOM written by the engine's writer), screenshot checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hlip_engine.io import write_dicom_series
from hlip_engine.study import Scan, Study

STUDY_UID = "1.2.826.0.1.3680043.8.498.74021000000000000000077"


def head_volume(shape=(24, 40, 36), seed=0) -> np.ndarray:
    """A head-like CT volume in HU (z, y, x): skull ring, brain, and one bright marker voxel."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = np.sqrt(z**2 + y**2 + x**2)
    vol = np.where(r < 0.75, 35.0, -1000.0) + np.where((r >= 0.75) & (r < 0.9), 1200.0, 0.0)
    vol += rng.normal(0, 3, shape)
    return np.round(vol).astype(np.float32)


def axial_scan(vol: np.ndarray, spacing=(3.0, 1.0, 1.2), origin=(-20.0, -25.0, 10.0), **kw) -> Scan:
    """(z, y, x) LPS-aligned voxels as an axial scan: columns +L, rows +P, slices +S."""
    sz, sy, sx = spacing
    affine = np.eye(4)
    affine[:3, :3] = np.diag([sx, sy, sz])  # (column, row, slice) -> LPS
    affine[:3, 3] = origin
    return Scan(voxels=vol, affine=affine, **kw)


def sagittal_of(axial: Scan, **kw) -> Scan:
    """The same voxels stored as a sagittal series: slices along L, rows head->feet, columns along P."""
    vol = axial.voxels  # (z, y, x)
    vox = np.ascontiguousarray(np.transpose(vol, (2, 0, 1))[:, ::-1, :])  # (x, -z, y)
    a = axial.affine
    nz = vol.shape[0]
    col = a[:3, 1]  # +P (was rows)
    row = -a[:3, 2]  # head -> feet
    sl = a[:3, 0]  # +L
    origin = a[:3, 3] + a[:3, 2] * (nz - 1)  # top slice, first row/column
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = col, row, sl, origin
    return Scan(voxels=vox, affine=affine, **kw)


def write_two_plane_study(folder: Path, shape=(24, 40, 36), marker=(7, 11, 23)) -> tuple[Path, tuple, Scan]:
    """An axial CT series and its sagittal reformat (same patient space) written as DICOM.

    Returns the folder, the marker's (z, y, x) index in the axial volume, and the axial scan.
    """
    vol = head_volume(shape)
    vol[marker] = 3000.0
    ax = axial_scan(vol, modality="CT", description="HEAD AX 3mm")
    sag = sagittal_of(ax, modality="CT", description="HEAD SAG")
    write_dicom_series(ax, folder / "ax", study_uid=STUDY_UID, series_number=2, study_description="CT HEAD",
                       study_date="20240102", image_type=("ORIGINAL", "PRIMARY", "AXIAL"))
    write_dicom_series(sag, folder / "sag", study_uid=STUDY_UID, series_number=3, study_description="CT HEAD",
                       study_date="20240102", image_type=("DERIVED", "SECONDARY", "REFORMATTED"))
    return folder, marker, ax


def write_big_study(folder: Path, n_series=4, slices=75, size=512) -> Path:
    """A CT study of ``n_series`` x ``slices`` slices of ``size``^2 (a 300-slice study by default)."""
    rng = np.random.default_rng(1)
    for s in range(n_series):
        vol = rng.integers(-1000, 1500, size=(slices, size, size)).astype(np.float32)
        scan = axial_scan(vol, spacing=(1.0 + s, 0.5, 0.5), origin=(-128.0, -128.0, -40.0),
                          modality="CT", description=f"SERIES {s + 1}")
        write_dicom_series(scan, folder / f"s{s + 1}", study_uid=STUDY_UID, series_number=s + 1,
                           study_description="CT BIG", study_date="20240103")
    return folder


def tiny_study() -> Study:
    """An in-memory 2-series MR study for model tests (small, so tiny models run in milliseconds)."""
    rng = np.random.default_rng(3)
    vol = rng.normal(100, 20, (12, 24, 20)).astype(np.float32)
    ax = axial_scan(vol, spacing=(4.0, 2.0, 2.0), modality="MR", description="T1 AX", series_number=1)
    sag = sagittal_of(ax, modality="MR", description="T2 SAG", series_number=2)
    return Study(uid=STUDY_UID, scans=[ax, sag], description="MR BRAIN", date="20240104", modality="MR")


def assert_not_blank(image: np.ndarray, what: str) -> None:
    """A real picture has many grey levels and some spread, not one flat colour."""
    rgb = np.asarray(image)[..., :3].astype(np.float32)
    assert rgb.std() > 10, f"{what}: screenshot looks blank (std {rgb.std():.1f})"
    assert len(np.unique(rgb.reshape(-1, 3)[::97], axis=0)) > 50, f"{what}: screenshot has too few colours"


def use_model(checkpoint) -> None:
    """Point every model widget at ``checkpoint`` (the settings live in the test's temporary config)."""
    from hlip_napari._session import SETTINGS

    SETTINGS.update(checkpoint=str(checkpoint), text_model="", device="cpu")


def main_window(viewer):
    """napari's main window, by the public route (its menu bar's window)."""
    return viewer.window.main_menu.window()


def canvas_widget(viewer):
    """The Qt widget the viewer's canvas draws into (vispy's), found through Qt, for real mouse events."""
    from qtpy.QtWidgets import QWidget

    found = [w for w in main_window(viewer).findChildren(QWidget) if type(w).__name__ == "CanvasBackendDesktop"]
    assert found, "no vispy canvas in the napari window"
    return found[0]


def raise_dock(viewer, name: str) -> None:
    """Bring a docked widget's tab to the front (``name`` as napari lists it, e.g. 'Search studies')."""
    key = next(k for k in viewer.window.dock_widgets if k == name or k.startswith(f"{name} ("))
    viewer.window.dock_widgets[key].parentWidget().raise_()
