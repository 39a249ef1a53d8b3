"""Slice geometry: order a stack of DICOM images and build its (column, row, slice) -> LPS affine.

Why this is its own module: the careful part of reading DICOM is not decoding but deciding where each
slice lies. Positions come from ImagePositionPatient (0020,0032) projected on the slice normal
(the cross product of the two ImageOrientationPatient (0020,0037) directions); InstanceNumber is only
a fallback. A stack whose slices are not evenly spaced (missing slices, variable spacing) or whose
slices slide sideways (CT gantry tilt) cannot be described by one affine; we plan a resampling onto a
regular, orthogonal grid and say so in the scan's warnings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_POSITION_TOL_MM = 0.01
_SPACING_REL_TOL = 0.02  # 2 % spacing jitter is rounding in the header, not a real gap
_TILT_TOL_PIXELS = 0.05  # in-plane drift (pixels, over the whole stack) below which there is no tilt


@dataclass
class StackPlan:
    """Where the slices of one stack go. ``order`` indexes the input slices (kept ones, sorted)."""

    order: list[int]
    affine: np.ndarray  # 4x4, (column, row, slice) -> LPS on the OUTPUT grid
    positions: np.ndarray | None = None  # (n,) mm along the normal of the kept, sorted slices
    targets: np.ndarray | None = None  # (m,) mm along the normal of the output slices (None = as is)
    shifts: np.ndarray | None = None  # (n, 2) in-plane (row, column) pixel shifts undoing a gantry tilt
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)
    warnings: list[str] = field(default_factory=list)
    tilt_degrees: float = 0.0


def plane_name(orientation) -> str:
    """axial / coronal / sagittal / oblique for an ImageOrientationPatient (6 numbers)."""
    if orientation is None:
        return "unknown plane"
    o = np.asarray(orientation, dtype=float)
    normal = np.cross(o[:3], o[3:])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def plan_stack(positions, orientation, pixel_spacing, instance_numbers, *, thickness=None,
               spacing_between=None, max_gap_slices: int = 2) -> StackPlan:
    """Order one stack and decide its output grid.

    positions : list of (x, y, z) or None per slice; orientation: 6 numbers or None;
    pixel_spacing : (row spacing, column spacing) or None; instance_numbers: list of int or None.
    Gaps of more than ``max_gap_slices`` missing slices split the stack: the largest contiguous part is
    kept and the rest dropped with a reason; smaller gaps and uneven spacing are interpolated.
    """
    n = len(instance_numbers)
    row_sp, col_sp = pixel_spacing if pixel_spacing else (1.0, 1.0)
    warnings: list[str] = []
    if not pixel_spacing:
        warnings.append("no PixelSpacing: 1 mm assumed in-plane")
    have_geometry = orientation is not None and all(p is not None for p in positions)
    if orientation is not None:
        col_dir, row_dir = _unit(np.asarray(orientation[:3], float)), _unit(np.asarray(orientation[3:], float))
    else:
        col_dir, row_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    normal = _unit(np.cross(col_dir, row_dir))
    if not np.any(normal):
        have_geometry, normal = False, np.array([0, 0, 1.0])
        warnings.append("degenerate ImageOrientationPatient")

    if not have_geometry:
        # No patient geometry: trust the acquisition order and the nominal spacing.
        order = sorted(range(n), key=lambda i: (instance_numbers[i] is None, instance_numbers[i] or 0, i))
        dz = spacing_between or thickness or 1.0
        warnings.append(f"no slice positions: slices ordered by InstanceNumber, {dz:g} mm spacing assumed")
        first = positions[order[0]] if positions and positions[order[0]] is not None else (0.0, 0.0, 0.0)
        return StackPlan(order=order, affine=_affine(col_dir, row_dir, normal, col_sp, row_sp, dz, first),
                         warnings=warnings)

    pos = np.asarray(positions, dtype=float)  # (n, 3)
    d = pos @ normal
    order = sorted(range(n), key=lambda i: (d[i], instance_numbers[i] or 0))
    dropped: list[tuple[int, str]] = []
    kept = [order[0]]
    for i in order[1:]:
        if abs(d[i] - d[kept[-1]]) < _POSITION_TOL_MM:
            dropped.append((i, f"duplicate slice position ({d[i]:.2f} mm along the slice normal)"))
        else:
            kept.append(i)
    order = kept
    d_sorted = d[order]

    if len(order) == 1:
        dz = spacing_between or thickness or 1.0
        return StackPlan(order=order, affine=_affine(col_dir, row_dir, normal, col_sp, row_sp, dz, pos[order[0]]),
                         positions=d_sorted, dropped=dropped, warnings=warnings)

    gaps = np.diff(d_sorted)
    step = float(np.median(gaps))
    # Split at big gaps (many missing slices): interpolating across them would invent anatomy.
    big = np.nonzero(gaps > step * (max_gap_slices + 1.5))[0]
    if len(big):
        bounds = [0, *(big + 1).tolist(), len(order)]
        parts = [(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
        a, b = max(parts, key=lambda ab: (ab[1] - ab[0], -ab[0]))
        for k in list(range(0, a)) + list(range(b, len(order))):
            dropped.append((order[k], f"separated from the rest of the series by a gap of more than "
                                      f"{max_gap_slices} missing slices"))
        warnings.append(f"gap in the series: kept the largest contiguous part ({b - a} of {len(order)} slices)")
        order, d_sorted = order[a:b], d_sorted[a:b]
        if len(order) > 1:
            step = float(np.median(np.diff(d_sorted)))
    pos_sorted = pos[order]

    # Gantry tilt: slices slide in-plane along the stack.
    offsets = pos_sorted - pos_sorted[0]
    shift_col = offsets @ col_dir / col_sp  # pixels
    shift_row = offsets @ row_dir / row_sp
    drift = float(np.hypot(shift_col[-1], shift_row[-1])) if len(order) > 1 else 0.0
    shifts, tilt = None, 0.0
    if drift > _TILT_TOL_PIXELS:
        span = d_sorted[-1] - d_sorted[0]
        inplane_mm = float(np.hypot(offsets[-1] @ col_dir, offsets[-1] @ row_dir))
        tilt = float(np.degrees(np.arctan2(inplane_mm, span))) if span > 0 else 90.0
        shifts = np.stack([shift_row, shift_col], axis=1)
        warnings.append(f"gantry tilt of {tilt:.1f} degrees: slices resampled onto an orthogonal grid")

    targets = None
    if len(order) > 1:
        gaps = np.diff(d_sorted)
        if np.max(np.abs(gaps - step)) > _SPACING_REL_TOL * step:
            ratio = gaps / step
            whole = np.abs(ratio - np.round(ratio)) <= 0.1  # a gap of k steps = k - 1 missing slices
            missing = int(np.sum(np.maximum(np.round(ratio[whole]) - 1, 0)))
            count = int(np.floor((d_sorted[-1] - d_sorted[0]) / step + 1e-3)) + 1  # never extrapolate
            targets = d_sorted[0] + step * np.arange(count)
            if missing:
                warnings.append(f"{missing} missing slice(s) filled by linear interpolation")
            if not np.all(whole):
                warnings.append(f"non-uniform slice spacing ({gaps.min():.3g}-{gaps.max():.3g} mm) "
                                f"resampled to {step:.3g} mm")
    origin = pos_sorted[0]
    return StackPlan(order=order, affine=_affine(col_dir, row_dir, normal, col_sp, row_sp, step, origin),
                     positions=d_sorted, targets=targets, shifts=shifts, dropped=dropped,
                     warnings=warnings, tilt_degrees=tilt)


def _affine(col_dir, row_dir, normal, col_sp, row_sp, dz, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, 0] = col_dir * col_sp
    a[:3, 1] = row_dir * row_sp
    a[:3, 2] = normal * dz
    a[:3, 3] = origin
    return a


def apply_plan(voxels: np.ndarray, plan: StackPlan) -> np.ndarray:
    """Resample sorted slices (n, rows, cols) onto the plan's regular grid (m, rows, cols), float32."""
    out = voxels
    if plan.shifts is not None:
        from scipy import ndimage

        fill = float(voxels.min())
        out = np.empty_like(voxels, dtype=np.float32)
        for k in range(voxels.shape[0]):
            out[k] = ndimage.shift(voxels[k], plan.shifts[k], order=1, mode="constant", cval=fill)
    if plan.targets is not None and plan.positions is not None:
        src = plan.positions
        idx = np.clip(np.searchsorted(src, plan.targets, side="right") - 1, 0, len(src) - 2)
        w = ((plan.targets - src[idx]) / (src[idx + 1] - src[idx])).astype(np.float32)
        w = np.clip(w, 0.0, 1.0)[:, None, None]
        out = (1.0 - w) * out[idx] + w * out[idx + 1]
    return np.ascontiguousarray(out, dtype=np.float32)
