"""Multi-frame objects (Enhanced MR/CT, legacy multi-frame) -> one SliceHeader per frame.

Why: modern scanners export a whole series as ONE file whose geometry sits in functional groups:
SharedFunctionalGroupsSequence (5200,9229) and PerFrameFunctionalGroupsSequence (5200,9230) with
PlanePositionSequence (0020,9113), PlaneOrientationSequence (0020,9116), PixelMeasuresSequence (0028,9110),
PixelValueTransformationSequence (0028,9145), FrameContentSequence (0020,9111) and MR echo/timing groups.
Turning frames into per-image headers lets the same grouping and slice-ordering code handle both worlds.
"""
from __future__ import annotations

from dataclasses import replace

from .dicom_headers import SliceHeader, _floats, _num, plain


def _first(seq_owner, keyword):
    seq = getattr(seq_owner, keyword, None) if seq_owner is not None else None
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _group_value(per_frame, shared, seq_keyword, value_keyword):
    """A functional-group value, per-frame first, shared otherwise (as the standard resolves them)."""
    for owner in (per_frame, shared):
        item = _first(owner, seq_keyword)
        if item is not None and value_keyword in item:
            return item.get(value_keyword)
    return None


def expand_frames(h: SliceHeader) -> list[SliceHeader]:
    """One header per frame of a multi-frame file (re-reads the file's full header, no pixels)."""
    import pydicom

    ds = pydicom.dcmread(h.path, stop_before_pixels=True, force=True)
    n = _num(ds.get("NumberOfFrames"), int) or 1
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames: list[SliceHeader] = []
    legacy = not per_frames and shared is None
    base_pos = h.position
    notes = list(h.attributes.get("warnings", []))
    if legacy and n > 1 and h.position is not None:
        notes.append("multi-frame object without per-frame positions: frames placed "
                     "SpacingBetweenSlices / SliceThickness apart along the normal")
    for k in range(n):
        pf = per_frames[k] if k < len(per_frames) else None
        if legacy:
            position = _legacy_position(h, k)
            orientation, spacing = h.orientation, h.pixel_spacing
            slope, intercept, thickness = h.rescale_slope, h.rescale_intercept, h.slice_thickness
            echo, temporal, stack = h.echo, h.temporal, ""
        else:
            position = _floats(_group_value(pf, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
            orientation = _floats(_group_value(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
            spacing = _floats(_group_value(pf, shared, "PixelMeasuresSequence", "PixelSpacing"), 2, positive=True)
            thickness = _num(_group_value(pf, shared, "PixelMeasuresSequence", "SliceThickness"))
            slope = _num(_group_value(pf, shared, "PixelValueTransformationSequence", "RescaleSlope"))
            intercept = _num(_group_value(pf, shared, "PixelValueTransformationSequence", "RescaleIntercept"))
            slope = h.rescale_slope if slope is None else slope
            intercept = h.rescale_intercept if intercept is None else intercept
            echo_time = _group_value(pf, shared, "MREchoSequence", "EffectiveEchoTime")
            echo = f"/{plain(echo_time)}" if echo_time is not None else h.echo
            content = _first(pf, "FrameContentSequence")
            stack = str(content.get("StackID", "")) if content is not None else ""
            temporal = str(plain(content.get("TemporalPositionIndex")) or "") if content is not None else ""
            position = position or (base_pos if n == 1 else None)
            orientation = orientation or h.orientation
            spacing = spacing or h.pixel_spacing
        frames.append(replace(
            h, frame=k, position=position, orientation=orientation, pixel_spacing=spacing,
            slice_thickness=thickness, rescale_slope=slope, rescale_intercept=intercept, echo=echo,
            temporal=temporal, acquisition=stack or h.acquisition,
            instance_number=k + 1, attributes={**h.attributes, **({"warnings": notes} if notes else {})}))
    return frames


def _legacy_position(h: SliceHeader, k: int):
    """Old multi-frame files give one ImagePositionPatient; frames step along the normal."""
    import numpy as np

    if h.position is None or h.orientation is None:
        return None
    o = np.asarray(h.orientation, dtype=float)
    normal = np.cross(o[:3], o[3:])
    dz = h.spacing_between_slices or h.slice_thickness or 1.0
    return tuple(float(x) for x in np.asarray(h.position) + k * dz * normal)
