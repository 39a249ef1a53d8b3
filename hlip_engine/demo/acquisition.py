"""How a scanner sees the phantom head: tissue contrasts, head pose, series geometry, noise and bias field.

Each series is sampled from the same head in the same patient (LPS) space, so an axial FLAIR, a sagittal T1
and a coronal reformat of one study overlay exactly, as they do on a workstation. A series is described by
a :class:`SeriesPlan` (plain numbers and strings, drawn from the study's random generator) and rendered by
:func:`render` into a :class:`~hlip_engine.study.Scan`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..study import Scan
from .anatomy import VOXEL_MM, Anatomy

# Signal of each tissue class per contrast. MR in arbitrary units (white matter on T1 ~0.85), CT in HU.
# Lesions differ from normal brain by a wide margin so that a small model can learn them from few studies.
CONTRASTS: dict[str, dict[str, float]] = {
    "T1": dict(gm=0.55, wm=0.85, csf=0.12, bone=0.03, diploe=0.70, scalp=0.75,
               tumour=0.42, necrosis=0.18, oedema=0.40, infarct=0.42, blood=0.55),
    "T2": dict(gm=0.60, wm=0.42, csf=1.00, bone=0.03, diploe=0.45, scalp=0.50,
               tumour=0.78, necrosis=0.95, oedema=0.92, infarct=0.90, blood=0.35),
    "FLAIR": dict(gm=0.58, wm=0.42, csf=0.06, bone=0.03, diploe=0.40, scalp=0.45,
                  tumour=0.80, necrosis=0.45, oedema=1.00, infarct=1.00, blood=0.60),
    "DWI": dict(gm=0.45, wm=0.38, csf=0.06, bone=0.02, diploe=0.08, scalp=0.12,
                tumour=0.55, necrosis=0.12, oedema=0.45, infarct=1.30, blood=0.25),
    "CT": dict(gm=38.0, wm=28.0, csf=5.0, bone=1250.0, diploe=450.0, scalp=20.0,
               tumour=46.0, necrosis=18.0, oedema=14.0, infarct=15.0, blood=70.0),
}
AIR_HU = -1000.0
_PLANE_AXES = {  # (column direction, row direction) in LPS, as ImageOrientationPatient lists them
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


def rotation(angles_deg) -> np.ndarray:
    """3x3 rotation from (about x, about y, about z) angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Pose:
    """Where the head lies in the scanner: LPS = R @ (F @ (scale * RAS)) + t, F flipping x and y."""

    angles_deg: tuple[float, float, float]
    translation: tuple[float, float, float]
    scale: float

    @property
    def matrix(self) -> np.ndarray:
        """4x4 MNI RAS mm -> patient LPS mm."""
        m = np.eye(4)
        m[:3, :3] = rotation(self.angles_deg) @ np.diag([-1.0, -1.0, 1.0]) * self.scale
        m[:3, 3] = self.translation
        return m

    def to_lps(self, ras) -> list[float]:
        return [float(v) for v in (self.matrix @ np.append(np.asarray(ras, dtype=np.float64), 1.0))[:3]]

    @staticmethod
    def draw(rng: np.random.Generator) -> Pose:
        angles = rng.uniform([-8.0, -4.0, -5.0], [8.0, 4.0, 5.0])  # nodding, tilting, turning
        table = rng.uniform([-6.0, -25.0, -160.0], [6.0, 5.0, 40.0])  # scanners put the origin anywhere along z
        return Pose(tuple(angles.round(2).tolist()), tuple(table.round(1).tolist()),
                    float(np.round(rng.uniform(0.93, 1.07), 3)))


@dataclass
class SeriesPlan:
    """One series to render: contrast, plane, grid and the DICOM attributes a scanner would write."""

    description: str
    contrast: str  # a key of CONTRASTS
    plane: str  # axial, sagittal, coronal
    size: tuple[int, int]  # (rows, columns)
    pixel_mm: float
    slices: int
    slice_mm: float
    tilt_deg: float = 0.0  # slab angulation about the patient's left-right axis
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # slab centre shift in LPS
    snr: float = 30.0  # white-matter signal over noise (MR); CT noise in HU is 1000 / snr
    bias: tuple[float, ...] = ()  # coefficients of the smooth multiplicative field (MR)
    gain: float = 1000.0  # scanner units per contrast unit (MR)
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    extra: dict[str, Any] = field(default_factory=dict)
    number: int = 1  # SeriesNumber
    extra_planes: tuple[str, ...] = ()  # a 3-plane localizer repeats its slab in these planes, same series
    projection: bool = False  # CT topogram: sum of attenuation through the head


def intensity_volume(tissues: dict[str, np.ndarray], contrast: str, overrides: dict[str, float] | None = None,
                     ) -> np.ndarray:
    """Signal on the MNI grid: each tissue fraction times its signal; what is left over is air."""
    table = {**CONTRASTS[contrast], **(overrides or {})}
    total = np.zeros_like(tissues["gm"])
    filled = np.zeros_like(tissues["gm"])
    for name, frac in tissues.items():
        total += frac * np.float32(table[name])
        filled += frac
    if contrast == "CT":
        total += np.clip(1.0 - filled, 0.0, 1.0) * np.float32(AIR_HU)
    return total


def series_affine(plan: SeriesPlan, centre_lps) -> np.ndarray:
    """4x4 (column, row, slice) -> LPS for a slab centred on ``centre_lps`` (slice normal = column x row)."""
    u, v = (np.array(a) for a in _PLANE_AXES[plan.plane])
    tilt = rotation((plan.tilt_deg, 0.0, 0.0))
    u, v = tilt @ u, tilt @ v
    w = np.cross(u, v)
    rows, cols = plan.size
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2] = u * plan.pixel_mm, v * plan.pixel_mm, w * plan.slice_mm
    centre = np.asarray(centre_lps, dtype=np.float64) + np.asarray(plan.offset_mm)
    half = (cols - 1) / 2 * a[:3, 0] + (rows - 1) / 2 * a[:3, 1]
    a[:3, 3] = centre - half - (plan.slices - 1) / 2 * a[:3, 2]
    return a


def sample(volume: np.ndarray, anat: Anatomy, pose: Pose, affine: np.ndarray, shape, background: float,
           ) -> np.ndarray:
    """Trilinear samples of an MNI-grid ``volume`` on a series grid; shape (slices, rows, columns)."""
    from scipy.ndimage import map_coordinates

    n, rows, cols = shape
    to_index = np.linalg.inv(anat.affine) @ np.linalg.inv(pose.matrix) @ affine  # series voxel -> MNI voxel
    m = to_index.astype(np.float32)
    k = np.arange(n, dtype=np.float32)[:, None, None]
    r = np.arange(rows, dtype=np.float32)[None, :, None]
    c = np.arange(cols, dtype=np.float32)[None, None, :]
    idx = np.empty((3, n, rows, cols), dtype=np.float32)
    for axis in range(3):  # separable: index = M[:, 0] * column + M[:, 1] * row + M[:, 2] * slice + M[:, 3]
        idx[axis] = m[axis, 0] * c + m[axis, 1] * r + m[axis, 2] * k + m[axis, 3]
    out = map_coordinates(volume, idx, order=1, mode="constant", cval=background, prefilter=False)
    return out.reshape(n, rows, cols).astype(np.float32)


def bias_field(shape, coeffs) -> np.ndarray:
    """Smooth receive-coil shading: exp of a quadratic polynomial over the normalised image grid."""
    n, rows, cols = shape
    z = np.linspace(-1, 1, n, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, rows, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, cols, dtype=np.float32)[None, None, :]
    terms = (x, y, z, x * y, x * x - 0.33, y * y - 0.33)
    log_field = sum(c * t for c, t in zip(coeffs, terms))
    return np.exp(log_field + np.zeros(shape, dtype=np.float32)).astype(np.float32)


def render(plan: SeriesPlan, volume: np.ndarray, anat: Anatomy, pose: Pose, centre_lps,
           rng: np.random.Generator) -> list[Scan]:
    """The series as scans (one per orientation: a 3-plane localizer gives three; everything else one)."""
    ct = plan.contrast == "CT"
    background = AIR_HU if ct else 0.0
    if plan.projection:
        return [_topogram(plan, volume, anat, pose, centre_lps, rng)]
    shape = (plan.slices, *plan.size)
    affines = [series_affine(plan, centre_lps)]
    affines += [series_affine(SeriesPlan(**{**plan.__dict__, "plane": p}), centre_lps) for p in plan.extra_planes]
    scans = []
    for affine in affines:
        img = sample(volume, anat, pose, affine, shape, background)
        if ct:
            img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(1000.0 / plan.snr)
            img = np.clip(np.round(img), -1024, 3071)
        else:
            img = img * bias_field(shape, plan.bias) if plan.bias else img
            sigma = np.float32(CONTRASTS[plan.contrast]["wm"] / plan.snr)
            real = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
            imag = rng.standard_normal(img.shape, dtype=np.float32) * sigma
            img = np.sqrt(real**2 + imag**2) * np.float32(plan.gain)  # magnitude images carry Rician noise
        scans.append(Scan(voxels=img.astype(np.float32), affine=affine, modality="CT" if ct else "MR",
                          description=plan.description))
    return scans


def _topogram(plan: SeriesPlan, volume: np.ndarray, anat: Anatomy, pose: Pose, centre_lps,
              rng: np.random.Generator) -> Scan:
    """Lateral CT scout: attenuation summed from right to left through the head, shown as one image."""
    depth = 120
    through = SeriesPlan(**{**plan.__dict__, "slices": depth, "slice_mm": VOXEL_MM, "projection": False})
    affine = series_affine(through, centre_lps)
    hu = sample(volume, anat, pose, affine, (depth, *plan.size), AIR_HU)
    mu = np.clip(hu + 1000.0, 0.0, None) / 1000.0  # attenuation relative to water
    image = mu.sum(axis=0, keepdims=True) * VOXEL_MM / 10.0  # water-equivalent path in cm
    image = image / max(float(image.max()), 1e-6) * 3000.0 + rng.normal(0.0, 15.0, image.shape)
    mid = affine.copy()
    mid[:3, 3] = affine[:3, 3] + (depth - 1) / 2 * affine[:3, 2]  # the plane through the middle of the head
    mid[:3, 2] = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    return Scan(voxels=np.round(np.clip(image, 0, 4095)).astype(np.float32), affine=mid, modality="CT",
                description=plan.description)
