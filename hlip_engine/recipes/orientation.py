"""Where each voxel axis points, and how to re-index a scan into the model's orientation.

HLIP's brain pipeline reorients every scan with SimpleITK's ``DICOMOrientImageFilter`` to "RPI" and then
puts the axis with the largest spacing first (the "depth"). Both are pure permutations and flips of the
voxel array, so we express them as a :class:`VoxelView` (numpy ``transpose`` + flips) that can be applied
to the voxels and undone on a relevance map. Nothing is resampled here.

Axis conventions: ITK axes are (x=column, y=row, z=slice); ``Scan.voxels`` is (slice, row, column), so
numpy axis ``n`` is ITK axis ``2 - n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# For each LPS physical axis: the letter of its positive direction, then the negative one.
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def orientation_code(direction: np.ndarray) -> str:
    """Three letters naming where the column, row and slice axes point, e.g. "LPS" (DICOM axial).

    direction: 3x3, columns = unit vectors of the (column, row, slice) axes in LPS.
    Same greedy rule as ITK's ``DICOMOrientation``: take the largest |cosine| first, then the largest among
    the axes left, so an oblique scan gets its closest orthogonal orientation (ties: last in ITK's order).
    """
    d = np.asarray(direction, dtype=np.float64)
    left = [(abs(d[p, a]), p, a) for p in range(3) for a in range(3)]
    code = [""] * 3
    for _ in range(3):
        _, p, a = max(left)  # (value, physical, axis): ITK's multimap keeps the last of equal values
        code[a] = _LETTERS[p][0 if d[p, a] > 0 else 1]
        left = [t for t in left if t[1] != p and t[2] != a]
    return "".join(code)


@dataclass(frozen=True)
class VoxelView:
    """``view(v) = flip(v.transpose(axes), flips)``: a re-indexing of a (slice, row, column) array.

    axes : numpy transpose order (output axis k comes from input axis axes[k])
    flips: per output axis, whether it is reversed
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def apply(self, voxels: np.ndarray) -> np.ndarray:
        out = np.transpose(voxels, self.axes)
        flip_axes = tuple(k for k, f in enumerate(self.flips) if f)
        return np.flip(out, flip_axes) if flip_axes else out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Back from the view's axes to the source array's axes (the inverse of :meth:`apply`)."""
        flip_axes = tuple(k for k, f in enumerate(self.flips) if f)
        if flip_axes:
            array = np.flip(array, flip_axes)
        return np.transpose(array, np.argsort(self.axes))

    def then_transpose(self, order) -> VoxelView:
        """The view followed by a further ``np.transpose(., order)``."""
        return VoxelView(tuple(self.axes[k] for k in order), tuple(self.flips[k] for k in order))

    def shape(self, source_shape) -> tuple[int, int, int]:
        return tuple(int(source_shape[a]) for a in self.axes)

    def index_affine(self, source_shape) -> np.ndarray:
        """4x4 from an index of the view to the index of the same voxel in the source array.

        ``source_affine @ view.index_affine(shape)`` places the view's voxels where the source's are
        (how the viewer hands napari a reoriented scan).
        """
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        for k, a in enumerate(self.axes):
            m[a, k] = -1.0 if self.flips[k] else 1.0
            m[a, 3] = int(source_shape[a]) - 1 if self.flips[k] else 0.0
        return m


def reorient_view(direction: np.ndarray, target: str) -> VoxelView:
    """The permutation + flips that ``DICOMOrientImageFilter(target)`` applies, as a numpy view.

    target: three letters for ITK axes (x, y, z), e.g. "RPI" (the HLIP brain convention) or "LPS".
    """
    target = check_orientation(target)
    code = orientation_code(direction)
    perm, flips = [0, 0, 0], [False, False, False]  # in ITK axis order
    for i, letter in enumerate(target):
        j = next(j for j in range(3) if _axis_of(code[j]) == _axis_of(letter))
        perm[i], flips[i] = j, code[j] != letter
    # ITK output axis i <- input axis perm[i]; numpy axis n <-> ITK axis 2 - n
    axes = tuple(2 - perm[2 - n] for n in range(3))
    return VoxelView(axes, tuple(flips[2 - n] for n in range(3)))


def check_orientation(target: str) -> str:
    """``target`` upper-cased, or ValueError unless it names each patient axis once (e.g. "RPI")."""
    letters = str(target).upper()
    axes = [p for t in letters for p, pair in enumerate(_LETTERS) if t in pair]
    if len(letters) != 3 or sorted(axes) != [0, 1, 2]:
        raise ValueError(f"orientation {target!r} must name each patient axis once with L/R, P/A, S/I, "
                         f"e.g. 'RPI'")
    return letters


def depth_first_order(spacing_np) -> tuple[int, int, int]:
    """Transpose putting the largest-spacing axis first, as HLIP does (ties keep the first axis: axial).

    spacing_np: spacing in numpy order (slice, row, column) of an RPI-oriented array (z, y, x).
    Coronal-like -> (y, z, x); sagittal-like -> (x, z, y): in-plane axes keep HLIP's order.
    """
    return ((0, 1, 2), (1, 0, 2), (2, 0, 1))[int(np.argmax(np.asarray(spacing_np)))]


def _axis_of(letter: str) -> int:
    for p, pair in enumerate(_LETTERS):
        if letter in pair:
            return p
    raise ValueError(f"unknown orientation letter {letter!r} (use L/R, P/A, S/I)")
