"""Write Siemens-style MOSAIC series: one DICOM image per volume, its slices tiled in a square grid.

Why: tests and the phantom generator need the format Siemens scanners store raw DWI, fMRI and perfusion in,
without shipping patient data. The files carry what readers (this package, dcm2niix, nibabel) use:
ImageType ...\\MOSAIC, NumberOfImagesInMosaic (0019,100A), B_value (0019,100C), DiffusionGradientDirection
(0019,100E), AcquisitionMatrix (0018,1310), and a CSA image header (0029,1010) with NumberOfImagesInMosaic,
SliceNormalVector, B_value, DiffusionGradientDirection and AcquisitionMatrixText. ImagePositionPatient is
the corner of the whole mosaic, as Siemens writes it (see :mod:`.dicom_mosaic`).
"""
from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..study import PatientInfo, Scan
from .dicom_write import (
    MR_IMAGE_STORAGE,
    _base_dataset,
    _ds_str,
    _file_meta,
    _save,
    _to_stored,
    _uid,
    choose_rescale,
    geometry_tags,
)

# Attributes this writer sets per volume or that make the file a Siemens MOSAIC; an ``extra`` of the caller
# (e.g. a phantom plan's DiffusionBValue of the trace it rendered, or another vendor's name) must not
# overwrite them.
_WRITER_OWNS = {"Manufacturer", "ScanningSequence", "DiffusionBValue", "DiffusionGradientOrientation", "ImageType",
                "SequenceName", "InstanceNumber", "AcquisitionNumber", "AcquisitionTime", "Rows", "Columns", "ImagePositionPatient",
                "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"}


def csa2_header(tags: dict[str, tuple[str, Sequence]]) -> bytes:
    """A CSA2 ("SV10") header from {name: (VR, values)}; values are written as text items, as Siemens does."""
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(tags), 77)]
    for name, (vr, values) in tags.items():
        values = list(values)
        out.append(struct.pack("<64si4s3i", name.encode()[:63], len(values), vr.encode()[:3], 0, len(values), 77))
        for v in values:
            text = (f"{v:.8f}" if isinstance(v, float) else str(v)).encode() + b"\x00"
            out.append(struct.pack("<4i", len(text), len(text), 77, len(text)))
            out.append(text + b"\x00" * (-len(text) % 4))
    return b"".join(out)


def _tile(volume: np.ndarray, grid: int, pad: tuple[int, int]) -> np.ndarray:
    n, rows, cols = volume.shape
    image = np.zeros((grid * rows + pad[0], grid * cols + pad[1]), dtype=volume.dtype)
    for k in range(n):
        r, c = divmod(k, grid)
        image[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = volume[k]
    return image


def write_mosaic_series(volumes: Sequence[np.ndarray], affine: np.ndarray, out_dir: str | Path, *,
                        study_uid: str, series_number: int, description: str = "ep2d_diff_mddw",
                        b_values: Sequence[float] | None = None,
                        gradients: Sequence[Sequence[float] | None] | None = None,
                        repetition_time_ms: float = 5000.0, echo_time_ms: float = 90.0,
                        study_description: str = "", study_date: str = "", patient: PatientInfo | None = None,
                        series_uid: str | None = None, pad_pixels: tuple[int, int] = (0, 0),
                        extra: dict[str, Any] | None = None) -> list[Path]:
    """Write each volume (slices, rows, columns) as one Siemens MOSAIC image; returns the paths in order.

    ``affine`` maps (column, row, slice) of every volume to LPS mm; tile k is slice k, and the CSA
    SliceNormalVector is the direction of the affine's slice axis (so it may run against row x column).
    ``b_values`` / ``gradients`` (one per volume) make a diffusion series (ImageType DIFFUSION); without
    them it is an EPI time series, one AcquisitionNumber and AcquisitionTime per volume.
    ``pad_pixels`` adds empty rows / columns beyond the grid (a reader must then take the tile size from
    AcquisitionMatrix). All volumes share one rescale, so their values compare. ``extra`` sets further
    attributes by keyword, except those the writer owns per volume (b-value, ImageType, geometry, ...).
    """
    from pydicom.tag import Tag
    from pydicom.uid import ImplicitVRLittleEndian

    vols = [np.asarray(v, dtype=np.float32) for v in volumes]
    n, rows, cols = vols[0].shape
    if any(v.shape != vols[0].shape for v in vols):
        raise ValueError("all volumes of a MOSAIC series must have the same shape")
    grid = math.ceil(math.sqrt(n))
    a = np.asarray(affine, dtype=np.float64)
    geo = geometry_tags(a)
    col_sp, row_sp = float(np.linalg.norm(a[:3, 0])), float(np.linalg.norm(a[:3, 1]))
    row_dir, col_dir = a[:3, 0] / col_sp, a[:3, 1] / row_sp
    dz = float(np.linalg.norm(a[:3, 2]))
    normal = a[:3, 2] / dz
    m_rows, m_cols = grid * rows + pad_pixels[0], grid * cols + pad_pixels[1]
    # Siemens' ImagePositionPatient: the first tile's corner moved back by half the mosaic-tile difference.
    ipp = a[:3, 3] - row_dir * col_sp * (m_cols - cols) / 2.0 - col_dir * row_sp * (m_rows - rows) / 2.0
    slope, intercept = choose_rescale(np.stack(vols), signed=False)
    diffusion = b_values is not None
    image_type = ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC") if diffusion else \
        ("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC")
    series_uid = series_uid or _uid()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = Scan(voxels=vols[0], affine=a, modality="MR", description=description)
    paths = []
    for t, vol in enumerate(vols):
        ds = _base_dataset(template, sop_class=MR_IMAGE_STORAGE, study_uid=study_uid, series_uid=series_uid,
                           series_number=series_number, study_description=study_description,
                           study_date=study_date, patient=patient, image_type=image_type, extra=None)
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "HLIP phantom"
        ds.ProtocolName = description
        ds.ScanningSequence = "EP"
        ds.SequenceVariant = "SK"
        ds.MRAcquisitionType = "2D"
        ds.PatientPosition = "HFS"
        ds.RepetitionTime = _ds_str(repetition_time_ms)
        ds.EchoTime = _ds_str(echo_time_ms)
        ds.AcquisitionMatrix = [cols, 0, 0, rows]  # frequency rows, 0, 0, phase columns (phase along COL)
        ds.InPlanePhaseEncodingDirection = "COL"
        ds.ImageOrientationPatient = geo["ImageOrientationPatient"]
        ds.PixelSpacing = geo["PixelSpacing"]
        ds.SliceThickness = _ds_str(dz)
        ds.SpacingBetweenSlices = _ds_str(dz)
        ds.ImagePositionPatient = [_ds_str(x) for x in ipp]
        ds.Rows, ds.Columns = m_rows, m_cols
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds_str(slope), _ds_str(intercept)
        ds.InstanceNumber = t + 1
        ds.AcquisitionNumber = t + 1
        seconds = 8 * 3600 + t * repetition_time_ms / 1000.0
        ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"
        b = float(b_values[t]) if diffusion else None
        g = None if gradients is None or gradients[t] is None else [float(x) for x in gradients[t]]
        csa: dict[str, tuple[str, Sequence]] = {"NumberOfImagesInMosaic": ("US", [n]),
                                                "SliceNormalVector": ("FD", [float(x) for x in normal]),
                                                "AcquisitionMatrixText": ("SH", [f"{rows}p*{cols}"])}
        ds.add_new(Tag(0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
        ds.add_new(Tag(0x0019, 0x100A), "US", n)
        if diffusion:
            ds.SequenceName = f"ep_b{int(round(b))}" + ("#1" if g is not None else "")
            ds.add_new(Tag(0x0019, 0x100C), "IS", str(int(round(b))))
            csa["B_value"] = ("IS", [int(round(b))])
            if g is not None:
                ds.add_new(Tag(0x0019, 0x100E), "FD", g)
                csa["DiffusionGradientDirection"] = ("FD", g)
        else:
            ds.SequenceName = "epfid2d1"
        ds.add_new(Tag(0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
        ds.add_new(Tag(0x0029, 0x1010), "OB", csa2_header(csa))
        for key, value in (extra or {}).items():
            if key not in _WRITER_OWNS:
                setattr(ds, key, value)
        sop_uid = _uid(series_uid, "mosaic", t) if series_uid else _uid()
        ds.file_meta = _file_meta(MR_IMAGE_STORAGE, sop_uid, ImplicitVRLittleEndian)
        ds.SOPInstanceUID = sop_uid
        stored = _to_stored(_tile(vol, grid, pad_pixels), slope, intercept, signed=False)
        path = out_dir / f"MOSAIC{int(series_number):04d}_{t + 1:05d}.dcm"
        _save(ds, path, stored, ImplicitVRLittleEndian)
        paths.append(path)
    return paths


def write_mosaic_dwi(scan: Scan, out_dir: str | Path, *, study_uid: str, series_number: int,
                     b_value: float = 1000.0, n_directions: int = 3, b0: np.ndarray | None = None,
                     **kwargs) -> list[Path]:
    """A Siemens MOSAIC DWI made from a trace-weighted ``scan``: one b=0 volume (``b0``, default twice the
    trace, i.e. an ADC of about 0.7e-3 mm2/s at b=1000) then ``n_directions`` b=``b_value`` volumes along
    orthogonal-ish gradient directions whose mean is ``scan.voxels``. Loading it gives back two scans:
    DWI b=0 and DWI b=1000 (the trace, equal to ``scan`` up to 16-bit rounding)."""
    trace = np.asarray(scan.voxels, dtype=np.float32)
    base = (2.0 * trace) if b0 is None else np.asarray(b0, dtype=np.float32)
    directions = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    directions += [tuple(float(x) for x in v / np.linalg.norm(v))
                   for v in (np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0]))]
    while len(directions) < n_directions:
        k = len(directions)
        v = np.array([math.cos(k), math.sin(k), math.cos(2 * k)])
        directions.append(tuple(float(x) for x in v / np.linalg.norm(v)))
    kwargs.setdefault("description", scan.description or "ep2d_diff_3scan_trace")
    kwargs.setdefault("series_uid", scan.series_uid or None)
    return write_mosaic_series([base] + [trace] * n_directions, scan.affine, out_dir, study_uid=study_uid,
                               series_number=series_number, b_values=[0.0] + [b_value] * n_directions,
                               gradients=[None] + directions[:n_directions], **kwargs)
