"""Which images make a scan: object classification, series grouping and splitting, localizer detection.

Why: a study as it comes off the scanner mixes real volumes with things a model must not see as scans
(structured reports, RT objects, presentation states, localizers, 2-D radiographs, screenshots), and a
single SeriesInstanceUID may hold several volumes (echoes, repeated acquisitions, a 3-plane pilot).
Every rule here returns a reason in words, because each skipped item is shown to the user.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .dicom_headers import SliceHeader
from .geometry import plane_name

# SOP class prefixes of objects that are not images (DICOM PS3.4 Annex B).
_NON_IMAGE_SOP = {
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory index, not an image)",
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.5.1.4.1.1.66": "raw data / registration / segmentation object",
    "1.2.840.10008.5.1.4.1.1.67": "real world value mapping",
}
_NON_IMAGE_MODALITY = {"SR": "structured report", "PR": "presentation state", "KO": "key object selection",
                       "RTSTRUCT": "radiotherapy structure set", "RTPLAN": "radiotherapy plan",
                       "RTDOSE": "radiotherapy dose", "RTRECORD": "radiotherapy record",
                       "RTIMAGE": "radiotherapy image", "REG": "registration", "SEG": "segmentation",
                       "DOC": "document", "ECG": "waveform", "AU": "audio"}
_RADIOGRAPH_MODALITY = {"CR", "DX", "MG", "IO", "PX", "RF", "XA", "RG", "DF", "DR"}
_RADIOGRAPH_SOP = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.12.")
_SECONDARY_CAPTURE_SOP = "1.2.840.10008.5.1.4.1.1.7"
_MAX_SIDE, _MAX_FRAMES = 16384, 65536  # beyond these a header is damaged, not a scan
_LOCALIZER_WORDS = re.compile(
    r"(localiz|localis|scout|survey|pilot|topogram|scanogram|surview|3[- ]?plane|tri[- ]?plane|plan_?scan)",
    re.IGNORECASE)


@dataclass
class LoadOptions:
    """Knobs of the DICOM reader (all have sensible defaults).

    min_slices: a stack with fewer images is not a scan (single localizer images, key images).
    keep_secondary_capture: secondary captures are usually screenshots; some archives store real
      volumes that way (e.g. exported reformats), so a user may opt in.
    keep_projections: MIP / projection images (ImageType PROJECTION IMAGE) are 2-D renderings.
    max_gap_slices: interpolate over at most this many missing slices; larger gaps split the series.
    """

    min_slices: int = 3
    keep_secondary_capture: bool = False
    keep_projections: bool = False
    keep_localizers: bool = False
    max_gap_slices: int = 2
    progress: bool = False


def object_skip_reason(h: SliceHeader, options: LoadOptions) -> str | None:
    """Why one file is not part of any scan, or None when it may be."""
    sop = h.sop_class
    if not sop and not h.study_uid:
        return "not a usable DICOM object (no SOPClassUID, no StudyInstanceUID)"
    for prefix, what in _NON_IMAGE_SOP.items():
        if sop == prefix or (prefix.endswith(".") and sop.startswith(prefix)) or (
                not prefix.endswith(".") and sop.startswith(prefix + ".")):
            return f"non-image object: {what}"
    if h.modality in _NON_IMAGE_MODALITY:
        return f"non-image object: {_NON_IMAGE_MODALITY[h.modality]} ({h.modality})"
    if h.modality in _RADIOGRAPH_MODALITY or sop.startswith(_RADIOGRAPH_SOP):
        return f"2-D radiograph ({h.modality or 'projection radiography'}), not a cross-sectional scan"
    if h.modality == "US":
        return "ultrasound image (2-D), not a cross-sectional scan"
    if sop.startswith(_SECONDARY_CAPTURE_SOP) and not options.keep_secondary_capture:
        return "secondary capture (screenshot or exported image); enable keep_secondary_capture to load"
    if not h.has_pixels:
        return "no pixel data"
    if h.rows <= 0 or h.columns <= 0:
        return "no image size (Rows/Columns missing)"
    if h.rows > _MAX_SIDE or h.columns > _MAX_SIDE or h.n_frames > _MAX_FRAMES:
        return f"implausible image size ({h.rows}x{h.columns}, {h.n_frames} frames)"
    if h.samples_per_pixel != 1 or h.photometric == "PALETTE COLOR":
        return f"colour image ({h.photometric or 'RGB'}), not a grey-scale scan"
    if not h.study_uid:
        return "no StudyInstanceUID"
    return None


def series_skip_reason(headers: list[SliceHeader], description: str, options: LoadOptions) -> str | None:
    """Why a whole series is not a scan (localizer, projection images), or None."""
    types = {t for h in headers for t in h.image_type}
    if not options.keep_localizers:
        if "LOCALIZER" in types:
            return "localizer (ImageType LOCALIZER)"
        if _LOCALIZER_WORDS.search(description or ""):
            return f"localizer / scout (series description {description!r})"
    if not options.keep_projections and "PROJECTION IMAGE" in types:
        return "projection images (MIP / ImageType PROJECTION IMAGE), not a volume"
    return None


def series_key(h: SliceHeader) -> str:
    return h.series_uid or f"series-number-{h.series_number}"


def group_by_study(headers: list[SliceHeader]) -> dict[str, list[SliceHeader]]:
    out: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        out[h.study_uid].append(h)
    return dict(out)


def group_by_series(headers: list[SliceHeader]) -> dict[str, list[SliceHeader]]:
    out: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        out[series_key(h)].append(h)
    return dict(out)


def _orientation_cluster(orients: list, tol: float = 0.01) -> list[int]:
    reps: list = []
    labels = []
    for o in orients:
        if o is None:
            labels.append(-1)
            continue
        for j, r in enumerate(reps):
            if np.max(np.abs(np.asarray(o) - r)) < tol:
                labels.append(j)
                break
        else:
            reps.append(np.asarray(o))
            labels.append(len(reps) - 1)
    return labels


@dataclass
class Stack:
    """A set of images that should form one 3-D scan, with a label saying how it was split off."""

    headers: list[SliceHeader]
    label: str = ""


def split_series(headers: list[SliceHeader]) -> list[Stack]:
    """Split one series into stacks of images sharing orientation, size, pixel spacing and echo; then
    separate repeated acquisitions (same positions occurring more than once)."""
    labels = _orientation_cluster([h.orientation for h in headers])
    groups: dict[tuple, list[SliceHeader]] = defaultdict(list)
    for h, lab in zip(headers, labels):
        spacing = tuple(round(x, 3) for x in h.pixel_spacing) if h.pixel_spacing else None
        groups[(lab, h.rows, h.columns, spacing, h.echo)].append(h)
    stacks: list[Stack] = []
    multi = len(groups) > 1
    for (_lab, rows, cols, _sp, echo), hs in groups.items():
        parts = []
        if multi:
            if len({k[0] for k in groups}) > 1:
                parts.append(plane_name(hs[0].orientation))
            if len({k[1:3] for k in groups}) > 1:
                parts.append(f"{rows}x{cols}")
            if echo and len({k[4] for k in groups}) > 1:
                parts.append(f"echo {echo.split('/')[0] or echo.split('/')[1]}")
        for sub, sub_label in _split_repeats(hs):
            stacks.append(Stack(sub, ", ".join(p for p in (*parts, sub_label) if p)))
    return stacks


def _positions_unique(hs: list[SliceHeader]) -> bool:
    pos = [h.position for h in hs if h.position is not None]
    if len(pos) < len(hs):
        return len({(h.path, h.frame) for h in hs}) == len(hs) and len({h.instance_number for h in hs}) == len(hs)
    rounded = {tuple(round(x, 2) for x in p) for p in pos}
    return len(rounded) == len(pos)


def _split_repeats(hs: list[SliceHeader]) -> list[tuple[list[SliceHeader], str]]:
    """Same positions seen twice: split by acquisition / temporal position / image type, else by order."""
    if len(hs) < 2 or _positions_unique(hs):
        return [(hs, "")]
    for attr, name in (("acquisition", "acquisition"), ("temporal", "time point"), ("image_type", "type")):
        groups: dict = defaultdict(list)
        for h in hs:
            groups[getattr(h, attr)].append(h)
        if len(groups) > 1 and all(_positions_unique(g) for g in groups.values()):
            return [(g, f"{name} {_label_value(k)}") for k, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    # Last resort: the k-th image at each position belongs to repetition k (ordered by InstanceNumber).
    seen: dict = defaultdict(int)
    reps: dict[int, list[SliceHeader]] = defaultdict(list)
    for h in sorted(hs, key=lambda h: (h.instance_number or 0)):
        key = tuple(round(x, 2) for x in h.position) if h.position is not None else h.instance_number
        reps[seen[key]].append(h)
        seen[key] += 1
    return [(g, f"repetition {k + 1}") for k, g in sorted(reps.items())]


def _label_value(k) -> str:
    return "\\".join(k) if isinstance(k, tuple) else str(k)
