"""Write a :class:`~hlip_engine.study.Scan` as real DICOM files, one image per slice (or one enhanced object).

Why a writer in a reader's package: tests, benchmarks and the demo need realistic studies (several series,
reformats, localizers, CT in HU, compressed transfer syntaxes) without shipping patient data. Everything is
written by pydicom with the geometry taken from ``Scan.affine``, so reading the files back must give the
same voxels and the same affine.

Tags written (per slice): SOPClassUID (CT/MR Image Storage), Study/Series/SOPInstanceUID,
FrameOfReferenceUID, ImagePositionPatient (0020,0032), ImageOrientationPatient (0020,0037),
PixelSpacing (0028,0030, row spacing then column spacing), SliceThickness, InstanceNumber,
RescaleSlope/RescaleIntercept (CT stored int16, MR stored uint16).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..study import PatientInfo, Scan

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


# --- values ----------------------------------------------------------------------------------------
def choose_rescale(values: np.ndarray, signed: bool) -> tuple[float, float]:
    """(slope, intercept) so that ``stored * slope + intercept`` gives ``values`` back.

    Integer-valued data that fits the 16-bit stored type keeps slope 1 (exact, e.g. CT in HU); anything
    else is spread over the full 16-bit range (error <= slope / 2).
    """
    lo_t, hi_t = (-32768, 32767) if signed else (0, 65535)
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 1.0, 0.0
    lo, hi = float(v.min()), float(v.max())
    if np.all(np.isfinite(v)) and np.all(v == np.round(v)):
        if lo >= lo_t and hi <= hi_t:
            return 1.0, 0.0
        if hi - lo <= hi_t - lo_t:
            return 1.0, float(lo - lo_t)
    if hi == lo:
        return 1.0, lo - (0 if lo_t <= 0 <= hi_t else lo_t)
    slope = (hi - lo) / (hi_t - lo_t)
    return slope, lo - slope * lo_t


def _to_stored(voxels: np.ndarray, slope: float, intercept: float, signed: bool) -> np.ndarray:
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    stored = np.round((voxels.astype(np.float64) - intercept) / slope)
    return np.clip(stored, info.min, info.max).astype(dtype)


def _ds_str(x: float) -> str:
    """A DICOM decimal string (at most 16 characters) that keeps as much precision as fits."""
    for digits in range(10, 0, -1):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{x:.1e}"


# --- geometry --------------------------------------------------------------------------------------
def geometry_tags(affine: np.ndarray) -> dict[str, Any]:
    """Per-series geometry from a (column, row, slice) -> LPS affine: orientation, spacing, slice vector."""
    a = np.asarray(affine, dtype=np.float64)
    col_vec, row_vec, slice_vec = a[:3, 0], a[:3, 1], a[:3, 2]
    col_sp, row_sp = np.linalg.norm(col_vec), np.linalg.norm(row_vec)
    if col_sp == 0 or row_sp == 0:
        raise ValueError("affine has a zero in-plane axis; cannot write DICOM geometry")
    return {
        "ImageOrientationPatient": [_ds_str(x) for x in (*(col_vec / col_sp), *(row_vec / row_sp))],
        "PixelSpacing": [_ds_str(row_sp), _ds_str(col_sp)],  # DICOM order: between rows, between columns
        "SliceThickness": _ds_str(float(np.linalg.norm(slice_vec))),
    }


def slice_position(affine: np.ndarray, k: int) -> list[str]:
    """ImagePositionPatient of slice ``k``: the LPS centre of its first transmitted pixel."""
    return [_ds_str(x) for x in (np.asarray(affine, dtype=np.float64) @ np.array([0.0, 0.0, k, 1.0]))[:3]]


# --- datasets --------------------------------------------------------------------------------------
def _uid(*parts: str) -> str:
    """A deterministic UID from ``parts`` (joined with a separator, so ("a", "12") != ("a1", "2")), or a fresh
    random one without parts."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["|".join(str(p) for p in parts)]) if parts else generate_uid()


def _base_dataset(scan: Scan, *, sop_class: str, study_uid: str, series_uid: str, series_number: int,
                  study_description: str, study_date: str, patient: PatientInfo | None,
                  image_type: Sequence[str], extra: dict[str, Any] | None):
    from pydicom.dataset import Dataset

    ds = Dataset()
    patient = patient or PatientInfo()
    ds.SOPClassUID = sop_class
    ds.Modality = scan.modality or ("CT" if sop_class == CT_IMAGE_STORAGE else "MR")
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(study_uid, "frame-of-reference")
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = scan.description
    ds.SeriesNumber = int(series_number)
    ds.ImageType = list(image_type)
    ds.Manufacturer = "HLIP Explorer"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PositionReferenceIndicator = ""
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: str):
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    return meta


def _save(ds, path: Path, stored: np.ndarray, transfer_syntax: str) -> None:
    """Attach pixel data (native or compressed) and write a DICOM Part 10 file with preamble."""
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ts = UID(transfer_syntax)
    if ts.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
        ds.compress(ts, stored, encoding_plugin="", generate_instance_uid=False)  # pydicom's own RLE encoder or the installed pylibjpeg
        ds.file_meta.TransferSyntaxUID = ts
    else:
        ds.PixelData = stored.tobytes() if ts.is_little_endian else stored.byteswap().tobytes()
    ds.save_as(path, enforce_file_format=True)


def _sop_class_for(modality: str, enhanced: bool) -> str:
    if modality.upper() == "CT":
        return ENHANCED_CT_IMAGE_STORAGE if enhanced else CT_IMAGE_STORAGE
    return ENHANCED_MR_IMAGE_STORAGE if enhanced else MR_IMAGE_STORAGE


def write_dicom_series(scan: Scan, out_dir: str | Path, *, study_uid: str, series_number: int,
                       study_description: str = "", study_date: str = "", patient: PatientInfo | None = None,
                       image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                       transfer_syntax: str | None = None, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``scan`` as one DICOM file per slice into ``out_dir``; returns the file paths in slice order.

    CT (``scan.modality == "CT"``) is stored int16 with RescaleSlope/RescaleIntercept (integer HU stay exact);
    anything else is written as MR Image Storage, uint16 with a rescale that keeps the data. The series UID is
    ``scan.series_uid`` when set. ``transfer_syntax`` (a UID string, default Explicit VR Little Endian) may be a
    compressed one pydicom can encode (RLE Lossless natively; JPEG-LS / JPEG 2000 lossless with their plugins).
    ``extra`` sets further attributes by keyword (e.g. ``{"EchoTime": 90, "SequenceName": "tse"}``).
    """
    from pydicom.uid import ExplicitVRLittleEndian

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    transfer_syntax = transfer_syntax or ExplicitVRLittleEndian
    modality = (scan.modality or "MR").upper()
    signed = modality == "CT"
    sop_class = _sop_class_for(modality, enhanced=False)
    series_uid = scan.series_uid or _uid()  # every write is a new series unless the scan names one
    voxels = np.asarray(scan.voxels)  # (slices, rows, columns)
    slope, intercept = choose_rescale(voxels, signed)
    stored = _to_stored(voxels, slope, intercept, signed)

    base = _base_dataset(scan, sop_class=sop_class, study_uid=study_uid, series_uid=series_uid,
                         series_number=series_number, study_description=study_description,
                         study_date=study_date, patient=patient, image_type=image_type, extra=extra)
    base.update(_geometry_dataset(scan.affine))
    base.Rows, base.Columns = int(voxels.shape[1]), int(voxels.shape[2])
    base.PixelRepresentation = 1 if signed else 0
    base.RescaleSlope = _ds_str(slope)
    base.RescaleIntercept = _ds_str(intercept)
    if modality == "CT":
        base.RescaleType = "HU"
        base.KVP = base.get("KVP", "120")

    paths = []
    for k in range(voxels.shape[0]):
        ds = base  # one dataset, updated per slice and written at once: no deep copy per file
        position = slice_position(scan.affine, k)
        # deterministic when the caller fixed the series UID (reproducible phantoms), else fresh; several
        # writes into one series (echoes, acquisitions, localizer planes) differ by position or attributes
        sop_uid = _uid(series_uid, "instance", k, position, image_type, sorted((extra or {}).items())) \
            if scan.series_uid else _uid()
        ds.file_meta = _file_meta(sop_class, sop_uid, transfer_syntax)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = position
        path = out_dir / f"IM{int(series_number):04d}_{k + 1:05d}.dcm"
        _save(ds, path, stored[k], transfer_syntax)
        paths.append(path)
    return paths


def _geometry_dataset(affine: np.ndarray):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in geometry_tags(affine).items():
        setattr(ds, key, value)
    return ds


def write_enhanced_series(scan: Scan, path: str | Path, *, study_uid: str, series_number: int,
                          study_description: str = "", study_date: str = "",
                          patient: PatientInfo | None = None,
                          image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL", "NONE"),
                          transfer_syntax: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``scan`` as ONE multi-frame (Enhanced MR / Enhanced CT) object, as modern scanners export.

    Geometry lives in the functional groups: shared PixelMeasures/PlaneOrientation/PixelValueTransformation,
    per-frame PlanePosition (0020,9113) and FrameContent (InStackPositionNumber).
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    transfer_syntax = transfer_syntax or ExplicitVRLittleEndian
    modality = (scan.modality or "MR").upper()
    signed = modality == "CT"
    sop_class = _sop_class_for(modality, enhanced=True)
    series_uid = scan.series_uid or _uid()
    voxels = np.asarray(scan.voxels)
    slope, intercept = choose_rescale(voxels, signed)
    stored = _to_stored(voxels, slope, intercept, signed)
    ds = _base_dataset(scan, sop_class=sop_class, study_uid=study_uid, series_uid=series_uid,
                       series_number=series_number, study_description=study_description,
                       study_date=study_date, patient=patient, image_type=image_type, extra=extra)
    sop_uid = _uid()
    ds.file_meta = _file_meta(sop_class, sop_uid, transfer_syntax)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.NumberOfFrames = int(voxels.shape[0])
    ds.Rows, ds.Columns = int(voxels.shape[1]), int(voxels.shape[2])
    ds.PixelRepresentation = 1 if signed else 0

    geo = geometry_tags(scan.affine)
    measures = Dataset()
    measures.PixelSpacing = geo["PixelSpacing"]
    measures.SliceThickness = geo["SliceThickness"]
    orient = Dataset()
    orient.ImageOrientationPatient = geo["ImageOrientationPatient"]
    transform = Dataset()
    transform.RescaleSlope = _ds_str(slope)
    transform.RescaleIntercept = _ds_str(intercept)
    transform.RescaleType = "HU" if signed else "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orient]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(voxels.shape[0]):
        position = Dataset()
        position.ImagePositionPatient = slice_position(scan.affine, k)
        content = Dataset()
        content.InStackPositionNumber = k + 1
        content.StackID = "1"
        frame = Dataset()
        frame.PlanePositionSequence = [position]
        frame.FrameContentSequence = [content]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    _save(ds, path, stored, transfer_syntax)
    return path


def write_secondary_capture(image: np.ndarray, path: str | Path, *, study_uid: str, series_number: int,
                            description: str = "screen capture") -> Path:
    """A 2-D Secondary Capture object (e.g. a screenshot a workstation stored into the study)."""
    from pydicom.uid import ExplicitVRLittleEndian

    img = np.asarray(image)
    scan = Scan(voxels=img[None].astype(np.float32), affine=np.eye(4), modality="OT", description=description)
    ds = _base_dataset(scan, sop_class=SECONDARY_CAPTURE_STORAGE, study_uid=study_uid,
                       series_uid=_uid(), series_number=series_number,
                       study_description="", study_date="", patient=None,
                       image_type=("DERIVED", "SECONDARY"), extra=None)
    sop_uid = _uid()
    ds.file_meta = _file_meta(SECONDARY_CAPTURE_STORAGE, sop_uid, ExplicitVRLittleEndian)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.PixelRepresentation = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path, np.clip(img, 0, 65535).astype(np.uint16), ExplicitVRLittleEndian)
    return path
