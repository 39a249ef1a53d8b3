"""Siemens MOSAIC images -> one SliceHeader per tile (a tile is one slice of the volume the image holds).

Why: Siemens stores raw EPI (DWI, fMRI, perfusion) as MOSAIC images: ONE DICOM image holding a whole
volume tiled in a square grid (ImageType contains MOSAIC). Read as a plain image it is a single 896 x 896
"slice" and the study loses its diffusion. The facts needed to unpack it:

* the number of slices: NumberOfImagesInMosaic (0019,100A), or the CSA image header (0029,1010) tag of the
  same name (read with ``nibabel.nicom.csareader``, not by hand);
* the grid: ceil(sqrt(n)) tiles on a side; tiles run left to right, then top to bottom, and the last
  ones may be empty (48 slices in a 7 x 7 grid);
* the tile size: Rows / grid when that agrees with the AcquisitionMatrix (0018,1310) or the CSA
  AcquisitionMatrixText; the acquisition matrix when the mosaic is larger than grid x tile (padding);
* ImagePositionPatient is the corner of the WHOLE mosaic, as if the mosaic were one large slice centred
  where the tiles are: the first tile's corner is half the size difference further along the row and
  column directions (the correction nibabel and dcm2niix apply);
* the slices follow the CSA SliceNormalVector, SpacingBetweenSlices apart (it may point against
  row x column: then tile 0 is the top of the stack, not the bottom).

Each tile becomes a SliceHeader with its own ImagePositionPatient, so the series grouping, the 4-D logic
(b-values, repeats) and the slice ordering treat a mosaic series exactly like a classic one.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np

from .dicom_headers import SliceHeader


class MosaicError(Exception):
    """A MOSAIC image that cannot be unpacked; the message says why."""


def _csa_image_header(ds):
    import warnings

    try:
        with warnings.catch_warnings():  # nibabel warns that its DICOM *readers* are experimental; CSA is fine
            warnings.simplefilter("ignore", UserWarning)
            from nibabel.nicom import csareader

        return csareader.get_csa_header(ds, "image")
    except Exception:  # a damaged CSA header: fall back to the DICOM tags
        return None


def _csa(csa, name: str, n: int = 1):
    if csa is None:
        return None
    try:
        items = csa["tags"][name]["items"]
    except (KeyError, TypeError):
        return None
    if len(items) < n or any(isinstance(x, str) and not x for x in items[:n]):
        return None
    return items[0] if n == 1 else [float(x) for x in items[:n]]


def _acquisition_tile(ds, csa) -> tuple[int, int] | None:
    """(tile rows, tile columns) from AcquisitionMatrix (0018,1310), else the CSA AcquisitionMatrixText."""
    phase = str(ds.get("InPlanePhaseEncodingDirection", "") or "").strip().upper()
    acq = ds.get("AcquisitionMatrix")
    try:
        fr, fc, pr, pc = (int(x) for x in acq)
    except (TypeError, ValueError):
        fr = fc = pr = pc = 0
    if phase == "ROW" and fc and pr:  # phase steps along a row: image columns; frequency samples: rows
        return fc, pr
    if phase != "ROW" and fr and pc:  # COL (the usual EPI case): phase steps give the rows
        return pc, fr
    text = _csa(csa, "AcquisitionMatrixText")
    if isinstance(text, str):
        nums = [int(x) for x in re.findall(r"\d+", text)[:2]]
        if len(nums) == 2:  # "<phase>p*<read>"
            return (nums[1], nums[0]) if phase == "ROW" else (nums[0], nums[1])
    return None


def mosaic_tiles(h: SliceHeader) -> list[SliceHeader]:
    """One header per slice of a MOSAIC image (reads the full header again, no pixels).

    Raises MosaicError naming the cause when the slice count or the tile size cannot be found.
    """
    import pydicom

    ds = pydicom.dcmread(h.path, stop_before_pixels=True, force=True)
    csa = _csa_image_header(ds)
    n = h.n_mosaic or int(_csa(csa, "NumberOfImagesInMosaic") or 0)
    if n <= 0:
        raise MosaicError("Siemens MOSAIC without NumberOfImagesInMosaic (0019,100A) or a CSA image header: "
                          "the number of slices it tiles is unknown")
    grid = math.ceil(math.sqrt(n))
    rows, cols = h.rows, h.columns
    acq = _acquisition_tile(ds, csa)
    notes = list(h.attributes.get("warnings", []))
    if acq is not None and acq[0] * grid == rows and acq[1] * grid == cols:
        tile = acq
    elif rows % grid == 0 and cols % grid == 0:
        tile = (rows // grid, cols // grid)  # reconstructed (e.g. interpolated) matrix differs from acquired
    elif acq is not None and acq[0] * grid <= rows and acq[1] * grid <= cols:
        tile = acq
        notes.append(f"MOSAIC {rows}x{cols} is larger than its {grid}x{grid} grid of {acq[0]}x{acq[1]} tiles "
                     f"(padding ignored)")
    else:
        raise MosaicError(f"Siemens MOSAIC of {n} slices: a {rows}x{cols} image is not a {grid}x{grid} grid "
                          f"and AcquisitionMatrix gives no tile size that fits")
    if h.position is None or h.orientation is None:
        raise MosaicError("Siemens MOSAIC without ImagePositionPatient / ImageOrientationPatient: "
                          "its slices cannot be placed")
    o = np.asarray(h.orientation, dtype=float)
    row_dir, col_dir = o[:3], o[3:]  # along a row (column index grows), along a column (row index grows)
    row_sp, col_sp = h.pixel_spacing or (1.0, 1.0)
    corner = (np.asarray(h.position, dtype=float) + row_dir * col_sp * (cols - tile[1]) / 2.0
              + col_dir * row_sp * (rows - tile[0]) / 2.0)
    normal = _csa(csa, "SliceNormalVector", 3)
    if normal is None or not np.any(normal):
        normal = np.cross(row_dir, col_dir)
        notes.append("MOSAIC without a CSA SliceNormalVector: slices assumed along row x column")
    normal = np.asarray(normal, dtype=float)
    normal = normal / np.linalg.norm(normal)
    dz = h.spacing_between_slices or h.slice_thickness or 1.0
    b_value = h.b_value
    if b_value is None:
        b = _csa(csa, "B_value")
        b_value = float(b) if isinstance(b, (int, float)) else None
    gradient = h.gradient
    if gradient is None:
        g = _csa(csa, "DiffusionGradientDirection", 3)
        gradient = tuple(g) if g is not None else None
    attributes = {**h.attributes, "NumberOfImagesInMosaic": n, "MosaicGrid": f"{grid}x{grid}"}
    if notes:
        attributes["warnings"] = notes
    return [replace(h, rows=tile[0], columns=tile[1], n_mosaic=n, mosaic=(k, grid, rows, cols),
                    position=tuple(float(x) for x in corner + k * dz * normal), spacing_between_slices=dz,
                    b_value=b_value, gradient=gradient, attributes=attributes)
            for k in range(n)]


def tile_of(mosaic_image: np.ndarray, h: SliceHeader) -> np.ndarray:
    """The tile of ``h`` cut out of its whole mosaic image (mosaic rows, mosaic columns)."""
    k, grid, _rows, _cols = h.mosaic
    r, c = divmod(k, grid)
    return mosaic_image[r * h.rows:(r + 1) * h.rows, c * h.columns:(c + 1) * h.columns]
