"""The DICOM images behind each scan of a study, and whether a map can share their geometry.

A relevance map is written on the geometry of the series it was computed on: same frame of reference,
same image plane positions and orientation, same rows and columns. That holds when every stored image
(or frame) of the series sits on one slice of the loaded scan and every slice has one image. It does not
when the loader changed the grid (slices filled by interpolation, gantry tilt resampled, a MOSAIC split,
one series split into several scans): then the map is reported as not written, never resampled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.dicom_sr import SR_SOP_PREFIX


@dataclass
class SeriesSource:
    """The stored images of one source scan.

    datasets           : headers (no pixels) of the series' images, in the order the map's frames take.
    frame_slices       : per frame of ``datasets`` (all frames of a multi-frame image, in order), the scan
                         slice it shows; empty when ``problem`` says why the map cannot share the geometry.
    frame_of_reference : FrameOfReferenceUID of the series ("" when it has none).
    """

    scan_index: int
    series_uid: str
    datasets: list = field(default_factory=list)
    frame_slices: list[int] = field(default_factory=list)
    frame_of_reference: str = ""
    problem: str = ""

    def image_at(self, k: int):
        """(SOP Class UID, SOP Instance UID, frame number or None) of the image showing scan slice ``k``."""
        i = 0
        for ds in self.datasets:
            n = int(ds.get("NumberOfFrames", 1) or 1)
            for f in range(n):
                if i < len(self.frame_slices) and self.frame_slices[i] == k:
                    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), (f + 1 if n > 1 else None)
                i += 1
        ds = self.datasets[len(self.datasets) // 2]
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID), None


def _candidate_files(where: str) -> list[Path]:
    p = Path(where)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    return []


def series_headers(scan) -> list:
    """Headers of the stored images of ``scan``'s series (found under ``scan.source``), SR objects left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out, seen = [], set()
    for f in _candidate_files(scan.source):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError, TypeError, KeyError):
            continue
        if str(ds.get("SeriesInstanceUID", "")) != scan.series_uid or "SOPInstanceUID" not in ds:
            continue
        if str(ds.get("SOPClassUID", "")).startswith(SR_SOP_PREFIX) or str(ds.SOPInstanceUID) in seen:
            continue
        seen.add(str(ds.SOPInstanceUID))
        out.append(ds)
    return out


def _frames(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ImagePositionPatient, ImageOrientationPatient) of every frame of an image; raises KeyError if absent."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if n != 1:
            raise KeyError("a multi-frame image without per-frame functional groups")
        return [(np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float))]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else {}
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        orient = item.get("PlaneOrientationSequence") or shared.get("PlaneOrientationSequence")
        out.append((np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
                    np.asarray(orient[0].ImageOrientationPatient, float)))
    return out


def match_geometry(scan, datasets) -> tuple[list, list[int], str]:
    """(datasets in slice order, slice per frame, problem): every frame on one slice of ``scan``, every
    slice covered once, same orientation, rows and columns; else ``problem`` says what differs."""
    shape = scan.shape
    notes = "; ".join(scan.attributes.get("warnings", []) or [])
    because = f" (the loader says: {notes})" if notes else ""
    try:
        frames = [(ds, _frames(ds)) for ds in datasets]
    except (KeyError, AttributeError, IndexError, ValueError, TypeError) as e:
        return [], [], f"the series' images carry no usable plane geometry ({e})"
    if any((int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != shape[1:] for ds, _ in frames):
        return [], [], (f"its images are not {shape[1]} x {shape[2]} pixels like the loaded scan (a MOSAIC or a "
                        f"resampled series){because}")
    inv = np.linalg.inv(scan.affine)
    tol_mm = 0.01 + 1e-3 * min(scan.spacing)
    want_orient = np.r_[scan.direction[:, 0], scan.direction[:, 1]]
    order = []
    for ds, fr in frames:
        ks = []
        for pos, orient in fr:
            if np.abs(orient - want_orient).max() > 1e-3:
                return [], [], f"its image orientation differs from the loaded scan's{because}"
            col, row, sl = (inv @ np.r_[pos, 1.0])[:3]
            k = int(round(sl))
            if abs(col) > 1e-3 or abs(row) > 1e-3 or np.linalg.norm(scan.world((k, 0, 0)) - pos) > tol_mm \
                    or not 0 <= k < shape[0]:
                return [], [], (f"an image at {np.round(pos, 2).tolist()} mm lies on no slice of the loaded scan's "
                                f"regular grid (irregular or filled slice spacing, or gantry tilt){because}")
            ks.append(k)
        order.append((min(ks), ds, ks))
    slices = [k for _, _, ks in order for k in ks]
    if sorted(slices) != list(range(shape[0])):
        missing = shape[0] - len(set(slices))
        extra = len(slices) - len(set(slices))
        what = (f"{missing} slice(s) of the loaded scan have no stored image (filled by the loader)" if missing
                else f"{extra} image(s) share a slice position (a series split into several scans)")
        return [], [], f"{what}{because}"
    order.sort(key=lambda t: t[0])
    return [ds for _, ds, _ in order], [k for _, _, ks in order for k in ks], ""


def find_sources(study, scan_indices) -> list[SeriesSource]:
    """One :class:`SeriesSource` per source scan index (DICOM studies only)."""
    out = []
    for k in scan_indices:
        scan = study.scans[k]
        src = SeriesSource(scan_index=int(k), series_uid=scan.series_uid)
        src.datasets = series_headers(scan) if scan.series_uid else []
        if not src.datasets:
            src.problem = f"no stored DICOM image of series {scan.series_uid or '?'} was found under {scan.source}"
        else:
            src.frame_of_reference = str(src.datasets[0].get("FrameOfReferenceUID", "") or "")
            ordered, slices, problem = match_geometry(scan, src.datasets)
            if not src.frame_of_reference:
                problem = "the series has no FrameOfReferenceUID"
            if problem:
                src.problem = problem
            else:
                src.datasets, src.frame_slices = ordered, slices
        out.append(src)
    return out
