"""Cheap DICOM headers: walk a folder safely and read only the tags a study tree needs.

Why a separate pass: a PACS export holds thousands of files; decoding pixels to learn which study and
series a file belongs to would take minutes. ``dcmread(stop_before_pixels=True, specific_tags=...)``
reads the header only, and we note where the pixel data starts so uncompressed slices can later be read
straight into numpy without parsing the file again.
"""
from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..study import PatientInfo

# Tags read in the header pass (keywords; pydicom resolves them to tags once).
HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate",
    "StudyTime", "StudyDescription", "SeriesDescription", "SeriesNumber", "InstanceNumber", "ImageType",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "EchoTime",
    "EchoNumbers", "AcquisitionNumber", "TemporalPositionIdentifier", "TriggerTime", "DiffusionBValue",
    "RepetitionTime", "InversionTime", "FlipAngle", "SequenceName", "ScanningSequence", "SequenceVariant",
    "MagneticFieldStrength", "BodyPartExamined", "ConvolutionKernel", "KVP", "ContrastBolusAgent",
    "ProtocolName", "Manufacturer", "ManufacturerModelName", "SeriesDate", "SeriesTime", "AcquisitionTime",
    "GantryDetectorTilt", "WindowCenter", "WindowWidth", "FrameOfReferenceUID",
    "DiffusionGradientOrientation", "AcquisitionMatrix", "InPlanePhaseEncodingDirection", "TemporalResolution",
    "NumberOfTemporalPositions", "ContentTime", "DiffusionDirectionality",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
)

# Enough to list studies (discover): decoding fewer values makes a 10,000-file archive ~40 % faster.
DISCOVERY_KEYWORDS = ("SOPClassUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
                      "StudyDate", "StudyDescription", "SeriesDescription", "Rows", "Columns", "SamplesPerPixel")

# What a radiologist browses by: copied into Scan.attributes (first slice's value).
BROWSE_KEYWORDS = (
    "ImageType", "SequenceName", "ScanningSequence", "SequenceVariant", "EchoTime", "RepetitionTime",
    "InversionTime", "FlipAngle", "MagneticFieldStrength", "SliceThickness", "SpacingBetweenSlices",
    "BodyPartExamined", "ConvolutionKernel", "KVP", "ContrastBolusAgent", "ProtocolName", "AcquisitionNumber",
    "EchoNumbers", "DiffusionBValue", "Manufacturer", "ManufacturerModelName", "SeriesDate", "SeriesTime",
    "AcquisitionTime", "GantryDetectorTilt", "WindowCenter", "WindowWidth", "PhotometricInterpretation",
    "TemporalResolution", "NumberOfTemporalPositions",
)

# Private tags the 4-D and MOSAIC logic needs (tag -> (name, VR)); read in the same header pass. Their VR is
# given here because implicit-VR files carry none and pydicom's dictionary does not know private tags.
PRIVATE_TAGS = {
    0x0019100A: ("NumberOfImagesInMosaic", "US"),  # Siemens: slices in one MOSAIC image
    0x0019100C: ("SiemensBValue", "IS"),  # Siemens B_value
    0x0019100E: ("SiemensGradientDirection", "FD"),  # Siemens DiffusionGradientDirection
    0x00431039: ("GEBValue", "IS"),  # GE slop_int_6..9: b-value first (sometimes + 10^9)
    0x20011003: ("PhilipsBValue", "FL"),  # Philips diffusion b-factor
}
_PRIVATE_VR = {tag: vr for tag, (_name, vr) in PRIVATE_TAGS.items()}

NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
_TAG_CACHE: list[int] = []
_WANTED: dict[int, str] = {}  # tag -> keyword
_WANTED_DISCOVERY: dict[int, str] = {}


def _header_tags() -> list[int]:
    if not _TAG_CACHE:
        from pydicom.datadict import tag_for_keyword

        _TAG_CACHE.extend(tag_for_keyword(k) for k in HEADER_KEYWORDS)
        _WANTED.update(zip(_TAG_CACHE, HEADER_KEYWORDS))
        _TAG_CACHE.extend(PRIVATE_TAGS)
        _WANTED.update((tag, name) for tag, (name, _vr) in PRIVATE_TAGS.items())
        _WANTED_DISCOVERY.update((tag_for_keyword(k), k) for k in DISCOVERY_KEYWORDS)
    return _TAG_CACHE


@dataclass(eq=False)
class SliceHeader:
    """One image (a file, or one frame of a multi-frame file) as its header describes it."""

    path: str
    transfer_syntax: str = ""
    sop_class: str = ""
    sop_uid: str = ""
    modality: str = ""
    study_uid: str = ""
    series_uid: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    image_type: tuple[str, ...] = ()
    rows: int = 0
    columns: int = 0
    n_frames: int = 1
    frame: int | None = None  # frame index inside a multi-frame file
    position: tuple[float, float, float] | None = None  # ImagePositionPatient (0020,0032)
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient (0020,0037): column dir, row dir
    pixel_spacing: tuple[float, float] | None = None  # (between rows, between columns)
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric: str = ""
    echo: str = ""  # EchoNumbers / EchoTime, to split multi-echo series
    acquisition: str = ""
    temporal: str = ""
    b_value: float | None = None  # diffusion b (s/mm2): DiffusionBValue or the vendor's private tag
    gradient: tuple[float, float, float] | None = None  # diffusion gradient direction
    directionality: str = ""  # DiffusionDirectionality: DIRECTIONAL, ISOTROPIC (a scanner's trace), NONE
    n_mosaic: int = 0  # Siemens MOSAIC: slices tiled in this image (0 = not a mosaic)
    mosaic: tuple[int, int, int, int] | None = None  # one tile of a mosaic: (tile, grid, mosaic rows, mosaic cols)
    acquisition_time: float | None = None  # seconds since midnight (AcquisitionTime, else ContentTime)
    has_pixels: bool = False
    pixel_offset: int | None = None  # byte offset of native little-endian pixel data, else None
    pixel_length: int | None = None
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    series_description: str = ""
    frame_of_reference: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    patient: PatientInfo = field(default_factory=PatientInfo, repr=False)


class NotDicom(Exception):
    """Raised for a file that is not DICOM at all (the reason is the message)."""


# --- walking -----------------------------------------------------------------------------------------
def walk_files(root: str | Path, problems: list[tuple[str, str]]) -> Iterator[str]:
    """Every regular file under ``root`` (symlinks followed, each folder visited once: loops end).

    Unreadable folders and broken links go to ``problems`` as (path, reason) instead of raising.
    """
    root = str(root)
    if os.path.isfile(root):
        yield root
        return
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            problems.append((folder, f"cannot open folder: {e.strerror or e}"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            problems.append((folder, "folder already visited (symbolic link loop); skipped"))
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            why = "no permission to list it" if isinstance(e, PermissionError) else f"cannot list folder: {e.strerror or e}"
            problems.append((folder, why))
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=True):
                    subfolders.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield entry.path
                elif entry.is_symlink():
                    problems.append((entry.path, "broken symbolic link"))
            except OSError as e:
                problems.append((entry.path, f"cannot stat: {e.strerror or e}"))
        stack.extend(reversed(subfolders))


# --- reading one header -----------------------------------------------------------------------------
def _num(value, cast=float):
    """First number of a header value, or None when missing or not a finite number."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        out = cast(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _floats(value, n: int, positive: bool = False):
    """``n`` finite numbers (all > 0 when ``positive``), else None."""
    if value is None:
        return None
    try:
        out = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(x) and (x > 0 or not positive) for x in out):
        return None
    return out


def plain(value):
    """A header value as JSON-friendly Python (str, int, float or list of those)."""
    if value is None:
        return None
    if isinstance(value, (str, int, float)):
        return value if not isinstance(value, str) else value.strip()
    if isinstance(value, bytes):
        return None
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value).__name__ in ("DSfloat", "DSdecimal"):
        return float(value)
    if type(value).__name__ == "IS":
        return int(value)
    return str(value)


def _pixel_location(fp, explicit: bool, little: bool) -> tuple[int | None, int | None, bool]:
    """After a stop_before_pixels read: (offset, length, has_pixels) of the (7FE0,0010) element."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None, None, False
    group, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    if (group, elem) not in ((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)):
        return None, None, False
    if not little:
        return None, None, True
    if explicit:
        vr = head[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", head[8:12])
            offset = start + 12
        else:
            (length,) = struct.unpack("<H", head[6:8])
            offset = start + 8
    else:
        (length,) = struct.unpack("<I", head[4:8])
        offset = start + 8
    if length == 0xFFFFFFFF:  # encapsulated (compressed) data
        return None, None, True
    return offset, length, length > 0


def _sniff(fp, path: str) -> bool:
    """True for a Part-10 file (preamble + 'DICM'); False for a raw dataset; NotDicom otherwise."""
    head = fp.read(132)
    fp.seek(0)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) >= 4:
        group_le, group_be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
        if group_le in (0x0002, 0x0008) or group_be == 0x0008:
            return False
    if not head:
        raise NotDicom("empty file")
    raise NotDicom("not a DICOM file (no 'DICM' marker)")


def read_header(path: str, discovery: bool = False) -> SliceHeader:
    """The header of one file (no pixel decoding). Raises NotDicom or another exception naming the problem.

    ``discovery=True`` decodes only the values that place the file in a study and series.
    """
    from .dicom_fastheader import read_fast

    tags = _header_tags()
    wanted = _WANTED_DISCOVERY if discovery else _WANTED
    try:
        fast = read_fast(path, wanted) if tags else None
    except (ValueError, struct.error):
        fast = None  # odd or damaged layout: pydicom is more tolerant (and names the problem if it fails)
    if fast is not None:
        raw, ts, media_sop, has_pixels, offset, length, _explicit = fast
        values = {}
        for tag, (vr, data) in raw.items():
            try:
                values[wanted[tag]] = decode_value(tag, vr, data)
            except Exception:  # one malformed value must not sink the header
                values[wanted[tag]] = None
        if ts not in NATIVE_LITTLE_ENDIAN:
            offset = length = None
        return header_from_values(values, path, ts, media_sop, has_pixels, offset, length)
    return _read_header_pydicom(path)


def _read_header_pydicom(path: str) -> SliceHeader:
    import pydicom

    with open(path, "rb") as fp:
        part10 = _sniff(fp, path)
        ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_header_tags(), force=not part10)
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        media_sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
        explicit = not ds.is_implicit_VR if ds.is_implicit_VR is not None else True
        little = ds.is_little_endian if ds.is_little_endian is not None else True
        offset, length, has_pixels = _pixel_location(fp, explicit, little)
    if not ts:
        ts = "1.2.840.10008.1.2" if not explicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    if ts not in NATIVE_LITTLE_ENDIAN:
        offset = length = None
    values: dict[str, Any] = {}
    for tag, kw in _WANTED.items():
        if tag in ds._dict:
            try:
                raw = ds._dict[tag]
                if getattr(raw, "is_raw", False):
                    values[kw] = decode_value(tag, raw.VR, raw.value, raw.is_little_endian)
                else:
                    values[kw] = plain(raw.value)
            except Exception:
                values[kw] = None
    return header_from_values(values, path, ts, media_sop, has_pixels, offset, length)


_STRUCT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI", "UC", "UT", "UR"}
_VR_CACHE: dict[int, str] = {}


def decode_value(tag: int, vr, data, little: bool = True):
    """Decode one element's raw bytes (5x faster than pydicom's converters, which matters at 10,000 files).

    Text is split on backslashes; DS/IS become numbers; binary numbers are unpacked; other VRs -> None.
    """
    if tag in _PRIVATE_VR and (vr is None or vr in ("UN", "OB")):
        vr = _PRIVATE_VR[tag]
    if vr is None or vr in ("UN", "US or SS", "OB or OW", "US or OW"):
        if tag not in _VR_CACHE:
            from pydicom.datadict import dictionary_VR

            try:
                _VR_CACHE[tag] = dictionary_VR(tag)
            except KeyError:
                _VR_CACHE[tag] = "UN"
        vr = _VR_CACHE[tag]
    if data is None:
        return None
    if vr in _TEXT_VRS:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        parts = [p.strip(" \x00") for p in text.split("\\")]
        if vr in ("DS", "IS"):
            try:
                nums = [float(p) if vr == "DS" else int(float(p)) for p in parts if p]
            except ValueError:
                return None
            return nums[0] if len(nums) == 1 else (nums or None)
        if vr == "PN":
            parts = [p.split("=")[0] for p in parts]
        return parts[0] if len(parts) == 1 else parts
    if vr in _STRUCT:
        fmt = _STRUCT[vr]
        size = struct.calcsize(fmt)
        n = len(data) // size
        vals = struct.unpack(("<" if little else ">") + fmt * n, data[: n * size])
        return vals[0] if n == 1 else (list(vals) or None)
    return None


def header_from_values(values: dict[str, Any], path: str, ts: str, media_sop: str, has_pixels: bool,
                       offset=None, length=None) -> SliceHeader:
    """Turn decoded header values (by keyword) into a SliceHeader; unparsable values become None/''."""
    g = values.get
    sop_class = str(g("SOPClassUID") or media_sop or "")
    echo_num, echo_time = g("EchoNumbers"), g("EchoTime")
    image_type = g("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
    h = SliceHeader(
        path=path,
        transfer_syntax=ts,
        sop_class=sop_class,
        sop_uid=str(g("SOPInstanceUID") or ""),
        modality=str(g("Modality") or "").upper(),
        study_uid=str(g("StudyInstanceUID") or ""),
        series_uid=str(g("SeriesInstanceUID") or ""),
        series_number=_num(g("SeriesNumber"), int),
        instance_number=_num(g("InstanceNumber"), int),
        image_type=tuple(str(x).upper() for x in image_type),
        rows=_num(g("Rows"), int) or 0,
        columns=_num(g("Columns"), int) or 0,
        n_frames=_num(g("NumberOfFrames"), int) or 1,
        position=_floats(g("ImagePositionPatient"), 3),
        orientation=_floats(g("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(g("PixelSpacing") or g("ImagerPixelSpacing"), 2, positive=True),
        slice_thickness=_num(g("SliceThickness")),
        spacing_between_slices=_num(g("SpacingBetweenSlices")),
        rescale_slope=_num(g("RescaleSlope")) or 1.0,
        rescale_intercept=_num(g("RescaleIntercept")) or 0.0,
        samples_per_pixel=_num(g("SamplesPerPixel"), int) or 1,
        bits_allocated=_num(g("BitsAllocated"), int) or 16,
        bits_stored=_num(g("BitsStored"), int) or (_num(g("BitsAllocated"), int) or 16),
        pixel_representation=_num(g("PixelRepresentation"), int) or 0,
        photometric=str(g("PhotometricInterpretation") or "").strip().upper(),
        echo=f"{plain(echo_num) or ''}/{plain(echo_time) or ''}" if (echo_num or echo_time) else "",
        acquisition=str(plain(g("AcquisitionNumber")) or ""),
        temporal=str(plain(g("TemporalPositionIdentifier")) or plain(g("TriggerTime")) or ""),
        b_value=_b_value(values),
        gradient=_floats(g("DiffusionGradientOrientation") or g("SiemensGradientDirection"), 3),
        directionality=str(g("DiffusionDirectionality") or "").strip().upper(),
        n_mosaic=(_num(g("NumberOfImagesInMosaic"), int) or 0) if "MOSAIC" in {str(x).upper() for x in image_type}
        else 0,
        acquisition_time=_seconds(g("AcquisitionTime")) if g("AcquisitionTime") else _seconds(g("ContentTime")),
        has_pixels=has_pixels,
        pixel_offset=offset,
        pixel_length=length,
        study_date=str(g("StudyDate") or ""),
        study_time=str(g("StudyTime") or ""),
        study_description=str(g("StudyDescription") or "").strip(),
        series_description=str(g("SeriesDescription") or "").strip(),
        frame_of_reference=str(g("FrameOfReferenceUID") or ""),
        patient=PatientInfo(name=str(g("PatientName") or ""), id=str(g("PatientID") or ""),
                            birth_date=str(g("PatientBirthDate") or ""), sex=str(g("PatientSex") or "")),
    )
    for key in BROWSE_KEYWORDS:
        value = plain(g(key))
        if value not in (None, "", []):
            h.attributes[key] = value
    return h


def _b_value(values: dict[str, Any]) -> float | None:
    """Diffusion b-value: the standard DiffusionBValue (0018,9087), else the manufacturer's private tag."""
    b = _num(values.get("DiffusionBValue"))
    if b is not None:
        return b
    maker = str(values.get("Manufacturer") or "").upper()
    if "SIEMENS" in maker:
        b = _num(values.get("SiemensBValue"))
    elif "GE" in maker.split() or maker.startswith("GE"):
        b = _num(values.get("GEBValue"))
        if b is not None and b >= 1e9:
            b = b % 1e9  # some GE versions add 10^9 to the b-value
    elif "PHILIPS" in maker:
        b = _num(values.get("PhilipsBValue"))
    else:
        b = None
    return b if b is not None and 0 <= b < 1e6 else None


def _seconds(value) -> float | None:
    """A DICOM TM value (HHMMSS.frac, or HH:MM:SS) as seconds since midnight, else None."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    try:
        hours, minutes = int(text[0:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def read_headers(paths, problems: list[tuple[str, str]], progress: bool = False,
                 discovery: bool = False) -> list[SliceHeader]:
    """Headers of many files; files that are not DICOM or cannot be read go to ``problems`` with a reason."""
    out = []
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc="reading DICOM headers", unit="file")
    for path in it:
        try:
            out.append(read_header(path, discovery))
        except NotDicom as e:
            problems.append((path, str(e)))
        except PermissionError:
            problems.append((path, "no permission to read it"))
        except OSError as e:
            problems.append((path, f"cannot read file: {e.strerror or e}"))
        except Exception as e:  # pydicom raises many kinds on corrupt headers
            problems.append((path, f"unreadable DICOM header ({type(e).__name__}: {e})"))
    return out
