"""Multi-frame objects (Enhanced MR/CT, legacy multi-frame) -> one SliceHeader per frame.

Why: modern scanners export a whole series as ONE file whose geometry sits in functional groups:
SharedFunctionalGroupsSequence (5200,9229) and PerFrameFunctionalGroupsSequence (5200,9230) with
PlanePositionSequence (0020,9113), PlaneOrientationSequence (0020,9116), PixelMeasuresSequence (0028,9110),
PixelValueTransformationSequence (0028,9145), FrameContentSequence (0020,9111) and MR echo/timing groups.
Turning frames into per-image headers lets the same grouping and slice-ordering code handle both worlds.
"""
from __future__ import annotations

from dataclasses import replace

from .dicom_headers import SliceHeader, _floats, _num, _seconds, plain


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
    dimensions = _dimension_pointers(ds)
    attributes = dict(h.attributes)
    if dimensions:
        from pydicom.datadict import keyword_for_tag

        attributes["DimensionIndex"] = [keyword_for_tag(t) or f"({t >> 16:04X},{t & 0xFFFF:04X})"
                                        for t in dimensions]
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
            b_value, gradient, when = h.b_value, h.gradient, h.acquisition_time
            directionality = h.directionality
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
            b_value, gradient, directionality = _diffusion(pf, shared, h)
            stamp = str(content.get("FrameAcquisitionDateTime", "") or "") if content is not None else ""
            when = _seconds(stamp[8:]) if len(stamp) > 8 else h.acquisition_time
            index = _dimension_values(content, dimensions)
            if not temporal:
                temporal = str(index.pop(_TEMPORAL_INDEX, "") or index.pop(_TRIGGER_TIME, "") or "")
            if b_value is None and _B_VALUE in index:
                stack = f"{stack}|b index {index[_B_VALUE]}"  # values unknown: keep the volumes apart
            others = [f"{t:08X}={v}" for t, v in index.items() if t not in _KNOWN_DIMENSIONS]
            if others:  # a dimension this reader does not know: its volumes stay separate acquisitions
                stack = "|".join([stack, *others])
            position = position or (base_pos if n == 1 else None)
            orientation = orientation or h.orientation
            spacing = spacing or h.pixel_spacing
        frames.append(replace(
            h, frame=k, position=position, orientation=orientation, pixel_spacing=spacing,
            slice_thickness=thickness, rescale_slope=slope, rescale_intercept=intercept, echo=echo,
            temporal=temporal, acquisition=stack or h.acquisition, b_value=b_value, gradient=gradient,
            directionality=directionality, acquisition_time=when, instance_number=k + 1,
            attributes={**attributes, **({"warnings": notes} if notes else {})}))
    return frames


# DimensionIndexPointer values (PS3.3 C.7.6.17) the 4-D logic understands.
_STACK_ID, _IN_STACK, _B_VALUE, _GRADIENT = 0x00209056, 0x00209057, 0x00189087, 0x00189089
_TEMPORAL_INDEX, _TRIGGER_TIME, _ECHO_TIME = 0x00209128, 0x00181060, 0x00189082
_POSITION, _DIFFUSION_DIRECTIONALITY = 0x00200032, 0x00189075
_KNOWN_DIMENSIONS = {_STACK_ID, _IN_STACK, _B_VALUE, _GRADIENT, _TEMPORAL_INDEX, _TRIGGER_TIME, _ECHO_TIME,
                     _POSITION, _DIFFUSION_DIRECTIONALITY}


def _dimension_pointers(ds) -> list[int]:
    """The DimensionIndexSequence (0020,9222): which attribute each DimensionIndexValues entry indexes."""
    out = []
    for item in ds.get("DimensionIndexSequence") or []:
        pointer = item.get("DimensionIndexPointer")
        try:
            out.append(int(pointer))
        except (TypeError, ValueError):
            out.append(0)
    return out


def _dimension_values(content, pointers: list[int]) -> dict[int, int]:
    values = content.get("DimensionIndexValues") if content is not None else None
    if values is None or not pointers:
        return {}
    values = [values] if isinstance(values, int) else list(values)
    return {p: v for p, v in zip(pointers, values) if p}


def _diffusion(per_frame, shared, h: SliceHeader):
    """(b-value, gradient direction, directionality) of one frame from the MR Diffusion group (0018,9117)."""
    b_value, gradient, directionality = h.b_value, h.gradient, h.directionality
    for owner in (per_frame, shared):
        item = _first(owner, "MRDiffusionSequence")
        if item is None:
            continue
        b = _num(item.get("DiffusionBValue"))
        if b is not None:
            b_value = b
        direction = _first(item, "DiffusionGradientDirectionSequence")
        g = _floats(direction.get("DiffusionGradientOrientation"), 3) if direction is not None else None
        if g is not None:
            gradient = g
        directionality = str(item.get("DiffusionDirectionality", "") or directionality).strip().upper()
        break
    return b_value, gradient, directionality


def _legacy_position(h: SliceHeader, k: int):
    """Old multi-frame files give one ImagePositionPatient; frames step along the normal."""
    import numpy as np

    if h.position is None or h.orientation is None:
        return None
    o = np.asarray(h.orientation, dtype=float)
    normal = np.cross(o[:3], o[3:])
    dz = h.spacing_between_slices or h.slice_thickness or 1.0
    return tuple(float(x) for x in np.asarray(h.position) + k * dz * normal)
