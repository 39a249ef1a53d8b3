"""A relevance map as a DICOM Parametric Map on the geometry of the series it was computed on.

Float values (32-bit, exactly the engine's ``Relevance.volumes``) with an identity real-world value mapping
(unit: none), the frame of reference, plane positions and orientation of the source series, and a window
over the map's range, so a viewer that fuses a parametric map with its series (OHIF, 3D Slicer, Weasis)
lays it over the right voxels.
"""
from __future__ import annotations

import numpy as np

from .uids import uid

MANUFACTURER = "HLIP Explorer"
SERIES_NUMBER_BASE = 9100  # derived series sort after the acquired ones
RESEARCH = "research result, not for clinical use"


def _lo(text: str, n: int = 64) -> str:
    """A DICOM LO value: at most ``n`` characters, no backslash or control characters."""
    text = " ".join(str(text).replace("\\", "/").split())
    return text if len(text) <= n else text[:n - 3] + "..."


def build_map(analysis, item, source, key: str, index: int):
    """One ``highdicom.pm.ParametricMap`` of relevance prompt ``item`` on ``source`` (a SeriesSource whose
    geometry the map can share)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rel = item.relevance
    volume = np.asarray(rel.volumes[list(rel.volume_scans).index(source.scan_index)], dtype=np.float32)
    frames = volume[np.asarray(source.frame_slices, dtype=int)]  # one per stored frame, in their order
    top = float(volume.max()) if volume.size else 0.0
    low = float(volume.min()) if volume.size else 0.0
    hi = top if top > low else low + 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HLIP_RELEVANCE",
        lut_explanation=_lo(f"relevance of '{item.prompt}' ({rel.method})"),
        unit=codes.UCUM.NoUnits, value_range=(low, hi), slope=1.0, intercept=0.0)
    window = hd.VOILUTTransformation(window_center=(low + hi) / 2.0, window_width=max(hi - low, 1e-12),
                                     voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)
    scan = analysis.study.scans[source.scan_index]
    sop = uid(key, "map", source.series_uid, item.prompt)
    series = uid(key, "map-series", source.series_uid, item.prompt)
    pm = hd.pm.ParametricMap(
        source_images=source.datasets, pixel_array=frames, series_instance_uid=series,
        series_number=SERIES_NUMBER_BASE + index, sop_instance_uid=sop, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=_lo(f"HLIP {analysis.model_name}"),
        software_versions=_lo(analysis.model_version), device_serial_number=analysis.fingerprint[:16],
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[window], content_label="RELEVANCE",
        content_description=_lo(f"HLIP relevance '{item.prompt}' ({RESEARCH})"),
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        image_flavor=hd.pm.ImageFlavorValues.VOLUME,
        derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.NONE,
    )
    first = source.datasets[0]
    for keyword in ("BodyPartExamined", "Laterality"):  # the map covers what its source covers
        if first.get(keyword):
            setattr(pm, keyword, first.get(keyword))
    if "Laterality" not in pm and "BodyPartExamined" not in pm:
        pm.Laterality = ""  # General Series, type 2C: without a body part, the side is unknown (empty)
    pm.SeriesDescription = _lo(f"HLIP relevance '{item.prompt}' on {scan.description or 'series'} - research only")
    return pm
