"""Which images make a scan: object classification, series grouping and splitting, localizer detection.

Why: a study as it comes off the scanner mixes real volumes with things a model must not see as scans
(structured reports, RT objects, presentation states, localizers, 2-D radiographs, screenshots), and a
single SeriesInstanceUID may hold several volumes (echoes, repeated acquisitions, a 3-plane pilot).
Every rule here returns a reason in words, because each skipped item is shown to the user.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

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
    "1.2.840.10008.5.1.4.1.1.30": "parametric map (a derived result, such as an HLIP relevance map)",
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
    """A set of images that should form one 3-D scan, with a label saying how it was split off.

    ``repeats`` (for a volume averaged from a 4-D series) lists, aligned with ``headers`` (one image per
    position), every image at that position; the scan is their mean. ``attributes`` describe the 4-D
    origin (b-value, echo, time points) and go into the scan's attributes.
    """

    headers: list[SliceHeader]
    label: str = ""
    repeats: list[list[SliceHeader]] | None = None
    attributes: dict = field(default_factory=dict)


def _echo_rank(echo: str) -> tuple[float, float]:
    number, _, time = echo.partition("/")
    def num(x):
        try:
            return float(x)
        except ValueError:
            return float("inf")
    return num(number), num(time)


def split_series(headers: list[SliceHeader]) -> list[Stack]:
    """Split one series into stacks of images sharing orientation, size, pixel spacing and echo; then
    turn repeated positions into what a radiologist reads: one trace per b-value (DWI), the mean over time
    (fMRI, DSC, DCE), or separate acquisitions."""
    labels = _orientation_cluster([h.orientation for h in headers])
    groups: dict[tuple, list[SliceHeader]] = defaultdict(list)
    for h, lab in zip(headers, labels):
        spacing = tuple(round(x, 3) for x in h.pixel_spacing) if h.pixel_spacing else None
        groups[(lab, h.rows, h.columns, spacing, h.echo)].append(h)
    stacks: list[Stack] = []
    multi = len(groups) > 1
    echoes = sorted({k[4] for k in groups if k[4]}, key=_echo_rank)
    for (_lab, rows, cols, _sp, echo), hs in groups.items():
        parts = []
        echo_attrs: dict = {}
        if multi:
            if len({k[0] for k in groups}) > 1:
                parts.append(plane_name(hs[0].orientation))
            if len({k[1:3] for k in groups}) > 1:
                parts.append(f"{rows}x{cols}")
            if echo and len(echoes) > 1:
                parts.append(f"echo {echoes.index(echo) + 1} of {len(echoes)}")
                echo_attrs = {"EchoIndex": echoes.index(echo) + 1, "NumberOfEchoes": len(echoes)}
        for sub in split_volumes(hs):
            sub.label = ", ".join(p for p in (*parts, sub.label) if p)
            sub.attributes = {**echo_attrs, **sub.attributes}
            if echo_attrs:
                kind = sub.attributes.get("ScanKind")
                sub.attributes["ScanKind"] = ", ".join(p for p in (kind, parts[-1]) if p)
            stacks.append(sub)
    return stacks


def _position_key(h: SliceHeader):
    return tuple(round(x, 2) for x in h.position) if h.position is not None else ("instance", h.instance_number)


def _by_position(hs: list[SliceHeader]) -> tuple[list[SliceHeader], list[list[SliceHeader]]]:
    """One representative per position, and every image at each position (in InstanceNumber order)."""
    at: dict = defaultdict(list)
    for h in sorted(hs, key=lambda h: (h.instance_number or 0)):
        at[_position_key(h)].append(h)
    reps = [imgs[0] for imgs in at.values()]
    return reps, list(at.values())


def _is_diffusion(hs: list[SliceHeader]) -> bool:
    bs = [h.b_value for h in hs if h.b_value is not None]
    if not bs:
        return False
    return len(set(round(b) for b in bs)) > 1 or max(bs) > 0 or any("DIFFUSION" in h.image_type for h in hs)


def _directions(hs: list[SliceHeader]) -> int:
    dirs = {tuple(round(x, 3) for x in h.gradient) for h in hs
            if h.gradient is not None and np.linalg.norm(h.gradient) > 1e-3}
    return len(dirs)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _split_diffusion(hs: list[SliceHeader]) -> list[Stack]:
    by_b: dict[int, list[SliceHeader]] = defaultdict(list)
    for h in hs:
        by_b[int(round(h.b_value or 0.0))].append(h)
    stacks = []
    for b, group in sorted(by_b.items()):
        by_type: dict[tuple, list[SliceHeader]] = defaultdict(list)
        for h in group:  # a scanner's own trace (ISOTROPIC) is never averaged with the directions
            by_type[(*h.image_type, "ISOTROPIC" if h.directionality == "ISOTROPIC" else "DIRECTIONAL")].append(h)
        if len(by_type) == 1 or _positions_unique(group):
            stacks.append(_diffusion_stack(b, group))
            continue
        names = _distinct_parts(list(by_type))  # e.g. directional images and the scanner's own trace
        for image_type, g in sorted(by_type.items()):
            stack = _diffusion_stack(b, g)
            stack.label = stack.attributes["ScanKind"] = f"{stack.label}, type {names[image_type]}"
            stacks.append(stack)
    return stacks


def _diffusion_stack(b: int, g: list[SliceHeader]) -> Stack:
    """One DWI volume of b-value ``b``: the mean of its directions and repeats (the trace), or as is."""
    reps, repeats = _by_position(g)
    volumes = max(len(r) for r in repeats)
    dirs = _directions(g)
    attrs = {"DiffusionBValue": b, "AveragedVolumes": volumes}
    if b > 0 and volumes > 1:
        n = dirs or volumes
        attrs["DiffusionDirections"] = n
        kind = f"DWI b={b} (trace of {_plural(n, 'direction')})"
    elif b > 0:  # one image per position: a single direction, or the scanner's own trace (TRACEW)
        trace = any(t in ("TRACEW", "TRACE", "ISOTROPIC") for h in g for t in (*h.image_type, h.directionality))
        kind = f"DWI b={b} (trace)" if trace else f"DWI b={b}" + (" (1 direction)" if dirs == 1 else "")
        if dirs == 1:
            attrs["DiffusionDirections"] = 1
    else:
        kind = f"DWI b=0 (mean of {volumes} volumes)" if volumes > 1 else "DWI b=0"
    attrs["ScanKind"] = kind
    return Stack(reps, kind, repeats if volumes > 1 else None, attrs)


_PERFUSION = re.compile(r"(perf|dsc|pwi|bolus)", re.IGNORECASE)
_DCE = re.compile(r"(dce|dyn|twist|disco|dynamic|4d)", re.IGNORECASE)
_FMRI = re.compile(r"(bold|fmri|rest|task|func)", re.IGNORECASE)


def _time_series_kind(h: SliceHeader) -> str:
    text = " ".join(str(h.attributes.get(k, "")) for k in ("ProtocolName", "SequenceName")) + " " \
        + h.series_description
    seq = h.attributes.get("ScanningSequence") or []
    epi = "EP" in [str(x).upper() for x in (seq if isinstance(seq, list) else [seq])]
    if _PERFUSION.search(text) or (epi and h.attributes.get("ContrastBolusAgent")):
        return "DSC perfusion"
    if _DCE.search(text) or h.attributes.get("ContrastBolusAgent"):
        return "DCE"
    if _FMRI.search(text) or epi:
        return "fMRI"
    return "time series"


def _time_step(volumes: list[list[SliceHeader]], first: SliceHeader) -> float | None:
    """Seconds between volumes: acquisition times first, else TemporalResolution, else TR for EPI."""
    times = sorted(min(t) for t in ([h.acquisition_time for h in v if h.acquisition_time is not None]
                                    for v in volumes) if t)
    if len(times) == len(volumes) and len(times) > 1:
        steps = np.diff(times)
        step = float(np.median(steps))
        if step > 0:
            return round(step, 4)
    res = first.attributes.get("TemporalResolution")
    if isinstance(res, (int, float)) and res > 0:
        return round(float(res) / 1000.0, 4)
    tr = first.attributes.get("RepetitionTime")
    if isinstance(tr, (int, float)) and tr > 0 and _time_series_kind(first) in ("fMRI", "DSC perfusion"):
        return round(float(tr) / 1000.0, 4)
    return None


def _time_series(groups: dict, hs: list[SliceHeader]) -> Stack:
    volumes = [g for _k, g in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))]
    reps, repeats = _by_position(hs)
    first = hs[0]
    kind = _time_series_kind(first)
    label = f"{kind} mean of {len(volumes)} volumes"
    attrs = {"NumberOfTimePoints": len(volumes), "AveragedVolumes": len(volumes), "ScanKind": label,
             "TimeSeries": kind}
    step = _time_step(volumes, first)
    if step is not None:
        attrs["TimeStepSeconds"] = step
    return Stack(reps, label, repeats, attrs)


def _sort_key(k):
    try:
        return (0, float(k), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(k))


_MIN_TIME_POINTS = 3  # fewer repeats are separate acquisitions (e.g. a repeated sequence), not a time series


def split_volumes(hs: list[SliceHeader]) -> list[Stack]:
    """Stacks of one geometry group: as is when every position occurs once; else by b-value (DWI), as the
    mean of a time series, or split into repeated acquisitions."""
    if len(hs) < 2 or _positions_unique(hs):
        return [Stack(hs)]
    if _is_diffusion(hs):
        return _split_diffusion(hs)
    by_type: dict[tuple, list[SliceHeader]] = defaultdict(list)
    for h in hs:
        by_type[h.image_type].append(h)
    if len(by_type) > 1:  # magnitude and phase, or directional images and the scanner's trace: apart first
        names = _distinct_parts(list(by_type))
        out = []
        for image_type, g in sorted(by_type.items()):
            for sub in split_volumes(g):
                sub.label = ", ".join(p for p in (f"type {names[image_type]}", sub.label) if p)
                if "ScanKind" in sub.attributes:
                    sub.attributes["ScanKind"] += f", type {names[image_type]}"
                out.append(sub)
        return out
    for attr in ("temporal", "acquisition"):
        groups: dict = defaultdict(list)
        for h in hs:
            groups[getattr(h, attr)].append(h)
        if len(groups) >= _MIN_TIME_POINTS and all(_positions_unique(g) for g in groups.values()):
            return [_time_series(groups, hs)]
    return [Stack(g, label) for g, label in _split_repeats(hs)]


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


def _distinct_parts(types: list[tuple]) -> dict[tuple, str]:
    """Name each ImageType by the values that tell it from the others: ("M",) vs ("P",), not the whole list."""
    width = max(len(t) for t in types)
    differing = [i for i in range(width) if len({t[i] if i < len(t) else "" for t in types}) > 1]
    return {t: "\\".join(t[i] for i in differing if i < len(t)) or "\\".join(t) for t in types}


def _label_value(k) -> str:
    return "\\".join(k) if isinstance(k, tuple) else str(k)
