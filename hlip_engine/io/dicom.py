"""DICOM folder -> Study: discover studies from headers, then load one study's scans.

The flow, as a careful reader does it:
1. walk the folder (any depth, DICOMDIR or not, symlink loops cut) and read headers only;
2. set aside what is not a cross-sectional image (SR, RT, PR, radiographs, screenshots), with a reason;
3. group by StudyInstanceUID, then SeriesInstanceUID; split series that mix orientation, size or echo,
   and separate repeated acquisitions; skip localizers and too-short stacks;
4. order slices along the slice normal, decode pixels (fast path for uncompressed data), rescale,
   resample gantry tilt / uneven spacing, and build each Scan's affine.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..study import Scan, Study, StudyLoadError, StudyRef
from .dicom_headers import SliceHeader, read_headers, walk_files
from .dicom_mosaic import MosaicError, mosaic_tiles
from .dicom_multiframe import expand_frames
from .dicom_pixels import read_slices
from .dicom_series import (
    LoadOptions,
    Stack,
    group_by_series,
    group_by_study,
    object_skip_reason,
    series_skip_reason,
    split_series,
)
from .dicom_sr import SR_SOP_PREFIX, study_report
from .geometry import apply_plan, plan_stack, plane_name

log = logging.getLogger(__name__)
_MULTI_PLANE_LOCALIZER_MAX = 10  # a series of several small stacks in different planes is a pilot


# --- header pass ------------------------------------------------------------------------------------
def scan_headers(path: str | Path | Iterable[str], progress: bool = False, discovery: bool = False
                 ) -> tuple[list[SliceHeader], list[tuple[str, str]]]:
    """Headers of every readable DICOM file under ``path`` (or of the given files), plus (file, reason)
    for each file that is not DICOM or cannot be read."""
    problems: list[tuple[str, str]] = []
    if isinstance(path, (str, Path)):
        files = list(walk_files(path, problems))
    else:
        files = list(path)
    return read_headers(files, problems, progress=progress, discovery=discovery), problems


def _common_folder(paths: list[str]) -> str:
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    except ValueError:
        return ""


def _study_summary(headers: list[SliceHeader]) -> tuple[str, str, str, int]:
    """(description, date, modality, number of series) of one study's headers."""
    def most_common(values) -> str:
        counts = Counter(v for v in values if v)
        return counts.most_common(1)[0][0] if counts else ""

    images = [h for h in headers if h.has_pixels and h.modality not in ("SR", "PR", "KO")]
    modalities = Counter(h.modality for h in (images or headers) if h.modality)
    modality = "/".join(m for m, _ in modalities.most_common())
    n_series = len({h.series_uid or h.series_number for h in headers})
    return (most_common(h.study_description for h in headers), most_common(h.study_date for h in headers),
            modality, n_series)


def refs_from_headers(headers: list[SliceHeader], source: str) -> list[StudyRef]:
    refs = []
    for uid, hs in group_by_study(headers).items():
        if not uid:
            continue
        description, date, modality, n_series = _study_summary(hs)
        files = tuple(sorted({h.path for h in hs}))
        refs.append(StudyRef(uid=uid, source=_common_folder(list(files)) or source, kind="dicom", files=files,
                             description=description, date=date, modality=modality, n_series=n_series))
    refs.sort(key=lambda r: (r.date, r.description, r.uid))
    return refs


def discover_dicom(path: str | Path, progress: bool = False) -> list[StudyRef]:
    """Every DICOM study under ``path``, from headers only (no pixel decoding)."""
    headers, _ = scan_headers(path, progress=progress, discovery=True)
    return refs_from_headers(headers, str(path))


# --- loading ------------------------------------------------------------------------------------------
def load_dicom_study(path: str | Path | StudyRef, *, study_uid: str | None = None,
                     options: LoadOptions | None = None) -> Study:
    """One study from a folder / file list / StudyRef. Raises StudyLoadError when there is no study or
    several (listing them), never for a single bad file: those land in ``Study.skipped``."""
    options = options or LoadOptions()
    if isinstance(path, StudyRef):
        source, study_uid = path.source, study_uid or path.uid
        # A hand-made ref may name only its folder: then read the folder and keep that study.
        headers, problems = scan_headers(path.files or path.source, progress=options.progress)
    else:
        source = str(path)
        headers, problems = scan_headers(path, progress=options.progress)
    by_study = group_by_study(headers)
    orphans = by_study.pop("", [])
    if study_uid is not None:
        if study_uid not in by_study:
            raise StudyLoadError(f"{source}: study {study_uid} not found")
        by_study = {study_uid: by_study[study_uid]}
    if not by_study:
        detail = "; ".join(f"{Path(f).name}: {why}" for f, why in problems[:3])
        found = [f"{len(problems)} unreadable or non-DICOM files" + (f", e.g. {detail}" if detail else "")]
        if orphans:  # DICOM files whose header ends before the study's identity (cut short), or lacks it
            found = [f"{len(orphans)} DICOM files without a Study Instance UID (header cut short?)",
                     *(found if problems else [])]
        raise StudyLoadError(f"{source}: no DICOM study found ({'; '.join(found)})")
    if len(by_study) > 1:
        refs = refs_from_headers([h for hs in by_study.values() for h in hs], source)
        listing = "\n".join(f"  - {r.uid}  {r.date or '?'}  {r.modality}  {r.description!r}  "
                            f"({r.n_series} series) in {r.source}" for r in refs)
        raise StudyLoadError(f"{source} holds {len(refs)} studies; load one at a time "
                             f"(hlip_engine.discover lists them):\n{listing}")
    uid, hs = next(iter(by_study.items()))
    skipped = list(problems) + [(h.path, object_skip_reason(h, options) or "no StudyInstanceUID")
                                for h in orphans]
    return _build_study(uid, hs, skipped, source, options)


def _build_study(uid: str, headers: list[SliceHeader], skipped: list[tuple[str, str]], source: str,
                 options: LoadOptions) -> Study:
    description, date, modality, _ = _study_summary(headers)
    patient = headers[0].patient
    images: list[SliceHeader] = []
    not_images: dict[tuple[str, str], list[SliceHeader]] = {}
    seen: dict[str, str] = {}
    for h in headers:
        if h.sop_uid:  # the same image reached twice (a copy, a symbolic link): keep one
            if h.sop_uid in seen:
                skipped.append((h.path, f"duplicate of {seen[h.sop_uid]} (same SOPInstanceUID)"))
                continue
            seen[h.sop_uid] = h.path
        reason = object_skip_reason(h, options)
        if reason:
            not_images.setdefault((h.series_uid, reason), []).append(h)
        else:
            images.append(h)
    for (_series, reason), hs in not_images.items():  # one line per series and reason, not per file
        item = hs[0].path if len(hs) == 1 else f"{_series_name(hs[0])} ({len(hs)} files)"
        skipped.append((item, reason))
    scans: list[Scan] = []
    for _key, series in group_by_series(images).items():
        try:
            scans.extend(_load_series(series, skipped, options))
        except MemoryError:
            skipped.append((_series_name(series[0]), "too large to load in memory"))
        except Exception as e:  # a batch job must survive one strange series; the reason is kept
            log.warning("series %s could not be loaded: %s: %s", series[0].series_uid, type(e).__name__, e)
            skipped.append((_series_name(series[0]), f"could not be loaded ({type(e).__name__}: {e})"))
    scans.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30,
                              _natural(s.description)))
    image_modalities = Counter(s.modality for s in scans if s.modality)
    if image_modalities:
        modality = "/".join(m for m, _ in image_modalities.most_common())
    reports = [h.path for hs in not_images.values() for h in hs
               if h.modality == "SR" or h.sop_class.startswith(SR_SOP_PREFIX)]
    return Study(uid=uid, scans=scans, description=description, date=date, modality=modality,
                 skipped=skipped, source=source, patient=patient, report=study_report(reports) if reports else {})


def _natural(text: str) -> tuple:
    """Sort key reading numbers as numbers: "b=500" before "b=1000", "echo 2" before "echo 10"."""
    return tuple((0, float(p), "") if p.replace(".", "", 1).isdigit() else (1, 0.0, p)
                 for p in re.split(r"(\d+(?:\.\d+)?)", text) if p)


def _series_name(h: SliceHeader) -> str:
    return f"series {h.series_number if h.series_number is not None else '?'} {h.series_description!r}"


def _load_series(series: list[SliceHeader], skipped: list[tuple[str, str]], options: LoadOptions) -> list[Scan]:
    first = series[0]
    name = _series_name(first)
    reason = series_skip_reason(series, first.series_description, options)
    if reason:
        skipped.append((f"{name} ({len(series)} images)", reason))
        return []
    images = _expand(series, name, skipped)
    if not images:
        return []
    stacks = split_series(images)
    planes = {plane_name(s.headers[0].orientation) for s in stacks}
    if (not options.keep_localizers and len(planes) >= 2
            and all(len(s.headers) < _MULTI_PLANE_LOCALIZER_MAX for s in stacks)):
        skipped.append((f"{name} ({len(images)} images)",
                        f"multi-plane localizer ({len(stacks)} small stacks in {len(planes)} planes)"))
        return []
    scans = []
    for stack in stacks:
        scan = _load_stack(stack, name, skipped, options)
        if scan is not None:
            scans.append(scan)
    return scans


def _expand(series: list[SliceHeader], name: str, skipped: list[tuple[str, str]]) -> list[SliceHeader]:
    """One header per image: multi-frame files give one per frame, Siemens MOSAIC images one per tile."""
    images: list[SliceHeader] = []
    mosaic_problems: dict[str, list[str]] = {}
    for h in series:
        if "MOSAIC" in h.image_type and h.n_frames == 1:
            try:
                images.extend(mosaic_tiles(h))
            except MosaicError as e:
                mosaic_problems.setdefault(str(e), []).append(h.path)
            except Exception as e:
                mosaic_problems.setdefault(f"unreadable MOSAIC header ({type(e).__name__}: {e})", []).append(h.path)
        elif h.n_frames > 1:
            try:
                images.extend(expand_frames(h))
            except Exception as e:
                skipped.append((h.path, f"unreadable multi-frame header ({type(e).__name__}: {e})"))
        else:
            images.append(h)
    for why, paths in mosaic_problems.items():  # one line per series and cause, naming both
        skipped.append((f"{name} ({len(paths)} MOSAIC images)" if len(paths) > 1 else paths[0],
                        f"{name}: {why}"))
    return images


def _load_stack(stack: Stack, name: str, skipped: list[tuple[str, str]], options: LoadOptions) -> Scan | None:
    hs = stack.headers
    label = f"{name}{f' [{stack.label}]' if stack.label else ''}"
    if len(hs) < options.min_slices:
        skipped.append((f"{label} ({len(hs)} images)", f"too few slices ({len(hs)} < {options.min_slices}), "
                                                       f"not a volume"))
        return None
    if stack.repeats is not None:
        return _load_averaged(stack, label, skipped, options)
    # Geometry first from headers (cheap), so dropped slices are never decoded.
    plan = _plan(hs, options)
    for i, why in plan.dropped:
        skipped.append((_where(hs[i]), why))
    ordered = [hs[i] for i in plan.order]
    problems: list[tuple[int, str]] = []
    voxels = read_slices(ordered, problems)  # (n, rows, cols) float32
    if problems:
        by_file: dict[tuple[str, str], list[int]] = {}
        for i, why in problems:  # one line per file, not per frame
            by_file.setdefault((ordered[i].path, why), []).append(i)
        for (path, why), idx in by_file.items():
            item = _where(ordered[idx[0]]) if len(idx) == 1 else f"{path} ({len(idx)} frames)"
            skipped.append((item, why))
        bad = {i for i, _ in problems}
        ordered = [h for i, h in enumerate(ordered) if i not in bad]
        voxels = voxels[[i for i in range(voxels.shape[0]) if i not in bad]]
        if len(ordered) < options.min_slices:
            skipped.append((label, f"too few readable slices ({len(ordered)})"))
            return None
        plan = _plan(ordered, options)
        keep = plan.order
        for i, why in plan.dropped:
            skipped.append((_where(ordered[i]), why))
        voxels, ordered = voxels[keep], [ordered[i] for i in keep]
    voxels = apply_plan(voxels, plan)
    return _make_scan(ordered, voxels, plan, stack.label, stack.attributes)


def _load_averaged(stack: Stack, label: str, skipped: list[tuple[str, str]], options: LoadOptions) -> Scan | None:
    """A volume averaged over the repeats of a 4-D series (DWI directions, time points), one pass per
    repeat so that memory stays that of one volume."""
    plan = _plan(stack.headers, options)
    for i, why in plan.dropped:
        skipped.append((_where(stack.headers[i]), why))
    slots = [stack.repeats[i] for i in plan.order]
    rows, cols = stack.headers[0].rows, stack.headers[0].columns
    total = np.zeros((len(slots), rows, cols), dtype=np.float64)
    count = np.zeros(len(slots), dtype=np.int64)
    failed: dict[str, int] = {}
    decoded: dict = {}
    for j in range(max(len(s) for s in slots)):
        batch = [(k, s[j]) for k, s in enumerate(slots) if len(s) > j]
        problems: list[tuple[int, str]] = []
        voxels = read_slices([h for _, h in batch], problems, decoded)
        bad = {i for i, _ in problems}
        for i, why in problems:
            failed[f"{_where(batch[i][1])}: {why}"] = 1
        for i, (k, _h) in enumerate(batch):
            if i not in bad:
                total[k] += voxels[i]
                count[k] += 1
    for item in failed:
        path, _, why = item.partition(": ")
        skipped.append((path, why))
    if np.any(count == 0):
        skipped.append((label, f"{int(np.sum(count == 0))} slice position(s) with no readable image"))
        return None
    voxels = apply_plan((total / count[:, None, None]).astype(np.float32), plan)
    ordered = [stack.headers[i] for i in plan.order]
    attrs = dict(stack.attributes)
    attrs["NumberOfImages"] = int(sum(len(s) for s in slots))
    if failed:
        attrs.setdefault("warnings", []).append(f"{len(failed)} image(s) unreadable: left out of the mean")
    scan = _make_scan(ordered, voxels, plan, stack.label, attrs)
    paths = sorted({h.path for s in slots for h in s})
    scan.source = paths[0] if len(paths) == 1 else _common_folder(paths)  # every file averaged, not only slot 0
    return scan


def _plan(hs: list[SliceHeader], options: LoadOptions):
    first = hs[0]
    return plan_stack([h.position for h in hs], first.orientation, first.pixel_spacing,
                      [h.instance_number for h in hs], thickness=first.slice_thickness,
                      spacing_between=first.spacing_between_slices, max_gap_slices=options.max_gap_slices)


def _where(h: SliceHeader) -> str:
    if h.mosaic is not None:
        return f"{h.path} (MOSAIC tile {h.mosaic[0] + 1})"
    return h.path if h.frame is None else f"{h.path} (frame {h.frame + 1})"


def _make_scan(hs: list[SliceHeader], voxels: np.ndarray, plan, label: str, extra: dict | None = None) -> Scan:
    first = hs[0]
    extra = dict(extra or {})
    notes = list(extra.pop("warnings", []))
    attrs = dict(first.attributes)
    attrs["SeriesInstanceUID"] = first.series_uid
    attrs["TransferSyntaxUID"] = first.transfer_syntax
    attrs["SOPClassUID"] = first.sop_class
    attrs["NumberOfImages"] = len(hs)
    if label:
        attrs["SplitFromSeries"] = label
    if first.n_frames > 1:
        attrs["NumberOfFrames"] = first.n_frames
    attrs.update(extra)
    warnings = list(first.attributes.get("warnings", [])) + notes + list(plan.warnings)
    if plan.tilt_degrees:
        attrs["GantryTiltDegrees"] = round(plan.tilt_degrees, 2)
    if len({h.rescale_slope for h in hs}) > 1 or len({h.rescale_intercept for h in hs}) > 1:
        attrs["RescaleVariesPerSlice"] = True
    if warnings:
        attrs["warnings"] = warnings
    description = first.series_description + (f" [{label}]" if label else "")
    paths = sorted({h.path for h in hs})
    source = (paths[0] if len(paths) == 1 else _common_folder(paths)) if first.n_frames == 1 else first.path
    return Scan(voxels=voxels, affine=plan.affine, modality=first.modality, description=description,
                series_uid=first.series_uid, series_number=first.series_number, attributes=attrs,
                source=source)


def load_volumes(scan: Scan, options: LoadOptions | None = None) -> tuple[np.ndarray, list[dict]]:
    """The 4-D data behind a scan that averages a 4-D series (a DWI trace, a time-series mean): an array
    (volumes, slices, rows, columns) on the scan's grid, in acquisition order, and per volume what it is
    (b-value, gradient, time point, acquisition time). A scan that averages nothing is one volume.

    For viewers (napari opens the array as 4-D); the scan itself stays 3-D. Re-reads the series' files.
    """
    if int(scan.attributes.get("AveragedVolumes", 1) or 1) <= 1 or not scan.source:
        return scan.voxels[None].copy(), [{}]
    options = options or LoadOptions()
    headers, _ = scan_headers(scan.source)
    series = [h for h in headers if h.series_uid == scan.series_uid]
    if not series:
        raise StudyLoadError(f"{scan.source}: series {scan.series_uid} no longer found")
    label = scan.attributes.get("SplitFromSeries", "")
    stacks = [s for s in split_series(_expand(series, _series_name(series[0]), [])) if s.label == label]
    if len(stacks) != 1 or stacks[0].repeats is None:
        raise StudyLoadError(f"{scan.source}: the volumes of {scan.description!r} cannot be told apart again")
    stack = stacks[0]
    plan = _plan(stack.headers, options)
    slots = [stack.repeats[i] for i in plan.order]
    n = min(len(s) for s in slots)
    if n != max(len(s) for s in slots):
        raise StudyLoadError(f"{scan.description!r}: positions hold {n} to {max(len(s) for s in slots)} images, "
                             f"not one per volume")
    out = None
    info = []
    decoded: dict = {}
    for j in range(n):
        problems: list[tuple[int, str]] = []
        voxels = apply_plan(read_slices([s[j] for s in slots], problems, decoded), plan)
        if problems:
            raise StudyLoadError(f"{_where(slots[problems[0][0]][j])}: {problems[0][1]}")
        if out is None:
            out = np.empty((n, *voxels.shape), dtype=np.float32)
        out[j] = voxels
        h = slots[0][j]
        info.append({k: v for k, v in (("b_value", h.b_value), ("gradient", h.gradient),
                                       ("temporal_position", h.temporal or None),
                                       ("acquisition", h.acquisition or None),
                                       ("acquisition_time", h.acquisition_time)) if v is not None})
    return out, info
