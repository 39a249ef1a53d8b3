"""The way back: from a map on the model grid to the voxels of the scan it came from.

Every HLIP step that moves voxels (reorientation, depth transpose, padding, resizing, cropping) is, per
axis, either a re-indexing or an affine map of voxel centres. So a source voxel ``i`` along one axis of
the oriented array lands at ``a * i + b`` on the model grid, and going back is one linear interpolation
per axis (= trilinear), with zero where the crop cut the scan off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .orientation import VoxelView


@dataclass(frozen=True)
class AxisMap:
    """Model-grid coordinate of a voxel centre: ``scale * index + offset`` (``n_model`` cells)."""

    scale: float = 1.0
    offset: float = 0.0
    n_model: int = 0

    def resized(self, n_in: int, n_out: int) -> AxisMap:
        """Then ``interpolate(size=n_out)`` with align_corners=False: centre i -> (i + 0.5) n_out / n_in - 0.5.

        nearest-exact follows the same centre mapping, so it is exact on the centres it copies.
        """
        r = n_out / n_in
        return AxisMap(self.scale * r, (self.offset + 0.5) * r - 0.5, n_out)

    def shifted(self, by: int, n_out: int) -> AxisMap:
        """Then padding (``by`` > 0 voxels before) or cropping (``by`` < 0: the crop's start)."""
        return AxisMap(self.scale, self.offset + by, n_out)


def start_map(n: int) -> AxisMap:
    return AxisMap(1.0, 0.0, n)


@dataclass(frozen=True)
class ScanGeometry:
    """How one model scan was cut from one source scan: the voxel view, then one AxisMap per view axis."""

    source_shape: tuple[int, int, int]  # (slices, rows, columns) of Scan.voxels
    view: VoxelView
    axes: tuple[AxisMap, AxisMap, AxisMap]  # (depth, height, width) of the model grid

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return tuple(m.n_model for m in self.axes)

    def source_index(self, model_points) -> np.ndarray:
        """Model-grid coordinates [..., 3] (depth, height, width; voxel centres) -> source (slice, row, column).

        The inverse of the per-axis maps and the view for single points (e.g. token centres), so they can be
        placed in patient space with ``Scan.world``. Fractional and outside-the-scan coordinates pass through.
        """
        f = np.asarray(model_points, dtype=np.float64)
        view_shape = self.view.shape(self.source_shape)
        out = np.empty_like(f)
        for k, (axis, n) in enumerate(zip(self.axes, view_shape)):
            v = (f[..., k] - axis.offset) / axis.scale  # index along view axis k
            out[..., self.view.axes[k]] = (n - 1 - v) if self.view.flips[k] else v
        return out

    def model_index(self, source_points) -> np.ndarray:
        """Source (slice, row, column) [..., 3] -> model-grid coordinates (depth, height, width): the forward
        map of :meth:`source_index`, e.g. to place a known lesion centre on the model grid."""
        s = np.asarray(source_points, dtype=np.float64)
        view_shape = self.view.shape(self.source_shape)
        out = np.empty_like(s)
        for k, (axis, n) in enumerate(zip(self.axes, view_shape)):
            v = s[..., self.view.axes[k]]
            v = (n - 1 - v) if self.view.flips[k] else v
            out[..., k] = axis.scale * v + axis.offset
        return out

    def model_spacing(self, source_spacing_zyx) -> np.ndarray:
        """Millimetres per model voxel along (depth, height, width), from the source scan's (slice, row,
        column) spacing."""
        sp = np.asarray(source_spacing_zyx, dtype=np.float64)
        return np.array([sp[a] / abs(m.scale) for a, m in zip(self.view.axes, self.axes)])

    def to_scan(self, grid_map) -> np.ndarray:
        """A map on the model grid (any resolution covering it: token grid or full grid) -> source voxels.

        grid_map: [D', H', W'] (leading singleton axes allowed), numpy or torch. Its cells are read as
        evenly covering the model grid (like ``interpolate(align_corners=False)``). Returns float32 shaped
        like ``Scan.voxels``; voxels the model never saw (cropped away) are 0.
        """
        m = _as_3d(grid_map)
        view_shape = self.view.shape(self.source_shape)
        for k in (2, 1, 0):  # the widest source axis last keeps the intermediate arrays small
            m = _interpolate_axis(m, k, self.axes[k], view_shape[k])
        return np.ascontiguousarray(self.view.undo(m), dtype=np.float32)


def _interpolate_axis(m: np.ndarray, k: int, axis: AxisMap, n_source: int) -> np.ndarray:
    n_map = m.shape[k]
    f = axis.scale * np.arange(n_source) + axis.offset  # model-grid coordinate of each source voxel
    inside = (f >= -0.5 - 1e-6) & (f <= axis.n_model - 0.5 + 1e-6)
    c = np.clip((f + 0.5) * n_map / axis.n_model - 0.5, 0, n_map - 1)  # map-cell coordinate
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_map - 1)
    t = (c - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[k] = n_source
    w0 = ((1 - t) * inside).reshape(shape)
    w1 = (t * inside).reshape(shape)
    out = np.take(m, i0, axis=k)
    out *= w0
    upper = np.take(m, i1, axis=k)
    upper *= w1
    out += upper
    return out


def _as_3d(grid_map) -> np.ndarray:
    if hasattr(grid_map, "detach"):  # torch tensor, possibly on GPU / bf16
        grid_map = grid_map.detach().float().cpu().numpy()
    m = np.asarray(grid_map, dtype=np.float32)
    while m.ndim > 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3 or min(m.shape) < 1:
        raise ValueError(f"to_scan expects a map shaped [D, H, W] on the model grid, got {tuple(m.shape)}")
    return m
