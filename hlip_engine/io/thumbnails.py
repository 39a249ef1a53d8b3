"""A study's thumbnail from the fewest bytes: one middle image of its largest series, windowed (no torch).

    img = study_thumbnail("/archive/study042")     # uint8 [<=64, <=64], or None when nothing is readable

What a search hit shows so the reader can judge it without opening it. The header pass reads headers only;
then a single image is decoded: the middle slice (by position along the slice normal) of the series with
the most images. CT is shown in a brain window (W80/L40) for head studies' soft tissue and otherwise the
soft-tissue window (W400/L40), others between their 1st and 99th percentile. NIfTI files give their middle
axial slice through nibabel's lazy proxy; anything else (HLIP tensors, unreadable folders) gives None.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

SIZE = 64


def _window(img: np.ndarray, modality: str, head: bool) -> np.ndarray:
    img = img.astype(np.float32)
    if modality == "CT":
        centre, width = (40.0, 80.0) if head else (40.0, 400.0)
        lo, hi = centre - width / 2, centre + width / 2
    else:
        lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    return np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Block-average to at most ``size`` pixels on the long side; uint8."""
    step = max(1, int(np.ceil(max(img.shape) / size)))
    h, w = (img.shape[0] // step) * step, (img.shape[1] // step) * step
    if h == 0 or w == 0:
        return (img * 255).astype(np.uint8)
    small = img[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    return np.ascontiguousarray((small * 255 + 0.5).astype(np.uint8))


def _dicom_thumbnail(folder: Path, size: int) -> np.ndarray | None:
    from .dicom import scan_headers

    headers, _ = scan_headers(folder)
    images = [h for h in headers if h.has_pixels and h.modality not in ("SR", "PR", "KO") and h.rows > 8
              and h.columns > 8 and h.samples_per_pixel == 1]
    if not images:
        return None
    series = Counter(h.series_uid or str(h.series_number) for h in images).most_common(1)[0][0]
    hs = [h for h in images if (h.series_uid or str(h.series_number)) == series]
    normal = None
    if hs[0].orientation:
        o = np.asarray(hs[0].orientation, dtype=float)
        normal = np.cross(o[:3], o[3:])
    hs.sort(key=lambda h: float(np.dot(normal, h.position)) if normal is not None and h.position
            else (h.instance_number or 0))
    middle = hs[len(hs) // 2]
    import pydicom

    ds = pydicom.dcmread(middle.path)
    pixels = ds.pixel_array
    if middle.frame is not None and pixels.ndim == 3:
        pixels = pixels[middle.frame]
    elif pixels.ndim == 3:
        pixels = pixels[pixels.shape[0] // 2]
    img = pixels.astype(np.float32) * float(middle.rescale_slope or 1.0) + float(middle.rescale_intercept or 0.0)
    if middle.photometric == "MONOCHROME1":
        img = img.max() - img
    head = any(w in f"{middle.study_description} {middle.series_description}".upper()
               for w in ("HEAD", "BRAIN", "CRAN", "SKULL"))
    return _fit(_window(img, middle.modality, head), size)


def _nifti_thumbnail(path: Path, size: int) -> np.ndarray | None:
    import nibabel as nib

    image = nib.load(str(path))
    shape = image.shape
    if len(shape) < 3:
        return None
    sl = np.asarray(image.dataobj[:, :, shape[2] // 2] if len(shape) == 3 else image.dataobj[:, :, shape[2] // 2, 0],
                    dtype=np.float32)
    return _fit(_window(np.rot90(sl), "", False), size)  # RAS x, y -> rows anterior at the top


def study_thumbnail(path, size: int = SIZE) -> np.ndarray | None:
    """uint8 [h, w] (long side <= ``size``) of the study at ``path`` (a DICOM folder or file, a NIfTI file or a
    folder of them); None when there is nothing to show. Never raises for a bad study."""
    try:
        p = Path(path)
        if p.is_file():
            if p.name.lower().endswith((".nii", ".nii.gz")):
                return _nifti_thumbnail(p, size)
            p = p.parent
        if not p.is_dir():
            return None
        niftis = sorted(p.glob("*.nii*"))
        if niftis:
            return _nifti_thumbnail(max(niftis, key=lambda f: f.stat().st_size), size)
        return _dicom_thumbnail(p, size)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - a thumbnail is a courtesy: a bad study (even one that makes a
        return None        # Rust decoder panic, a BaseException) shows none
