"""Scans and relevance maps as napari layer data, placed in patient space.

Why reorient: napari slices a layer along its *data* axes, so a sagittal scan given a permuting
affine would be cut in its own plane while drawn in the axial one (napari warns "non-orthogonal
slicing"). We therefore flip/transpose each scan's voxels (a view, no copy) until its axes run along
the world axes (S, P, L) = LPS reversed, and hand napari the matching affine. A voxel keeps its
patient position exactly; only the array order changes. Oblique scans keep their small residual
rotation (exact in 3-D, the nearest plane in 2-D, as napari does).

World axes: 0 = z (inferior -> superior), 1 = y (anterior -> posterior), 2 = x (right -> left), so the
default 2-D view is axial in radiological convention (patient's left on screen right, anterior up).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hlip_engine import windows
from hlip_engine.recipes.orientation import VoxelView, reorient_view
from hlip_engine.study import Scan, Study
from hlip_engine.windows import (  # noqa: F401 - the browser's window box takes them from here
    MR_PERCENTILES,
    auto_limits,
    value_range,
    window_limits,
    window_presets,
)

AXIS_LABELS = ("I-S", "A-P", "R-L")
STUDY_KEY = "hlip_study"  # layer.metadata key holding the Study a scan layer came from
SCAN_KEY = "hlip_scan"  # layer.metadata key holding the scan's index in Study.scans
KIND_KEY = "hlip_kind"  # "scan" or "relevance"
WINDOW_KEY = "hlip_window"  # layer.metadata key: the CT preset name shown, or None for MR percentiles
MR_AUTO_TEXT = "auto (0.5-99.5 %)"


# --- geometry --------------------------------------------------------------------------------------
def layer_view(scan: Scan) -> tuple[VoxelView, np.ndarray]:
    """(view, affine): the scan's voxels re-indexed to run along world (z, y, x) = (S, P, L), which is
    ITK's "LPS", by the engine's :func:`reorient_view` (a numpy view, no copy), and the 4x4 affine from
    that view's indices to world mm."""
    view = reorient_view(scan.direction, "LPS")
    return view, scan.affine_zyx @ view.index_affine(scan.shape)


# --- contrast --------------------------------------------------------------------------------------
def default_ct_window(scan: Scan, study: Study | None = None) -> str:
    """The window a radiologist opens this CT in, by the study's body part (:mod:`hlip_engine.windows`,
    the reading ``recipe_for`` uses): Brain for heads, Lung / Mediastinum for chests."""
    return windows.default_ct_window(study if study is not None else Study(uid="", scans=[scan]), scan)


def default_limits(scan: Scan, study: Study | None = None) -> tuple[tuple[float, float], str | None]:
    """(contrast limits, CT preset name or None for MR percentiles) for a scan."""
    if (scan.modality or "").upper() == "CT":
        name = default_ct_window(scan, study)
        return window_limits(name), name
    return auto_limits(scan.voxels), None


def contrast_text(window: str | None) -> str:
    """How a layer's contrast was chosen, in words (layer metadata "contrast")."""
    return f"CT {window}" if window else MR_AUTO_TEXT


# --- layers ----------------------------------------------------------------------------------------
def scan_name(scan: Scan, index: int) -> str:
    number = f"{scan.series_number}" if scan.series_number is not None else f"#{index + 1}"
    return f"{number} {scan.description or scan.modality or 'scan'}".strip()


def _plain(value: Any) -> Any:
    """Metadata a person can read (and napari can show) without holding numpy objects."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def scan_layer_data(study: Study, index: int, *, visible: bool = True, prefix: str = "") -> tuple:
    """One scan as a napari ``(data, kwargs, "image")`` tuple, placed in patient space."""
    scan = study.scans[index]
    view, affine = layer_view(scan)
    limits, window = default_limits(scan, study)
    metadata = {
        STUDY_KEY: study,
        SCAN_KEY: index,
        KIND_KEY: "scan",
        "study_uid": study.uid,
        "study_description": study.description,
        "study_date": study.date,
        "series_number": scan.series_number,
        "series_description": scan.description,
        "series_uid": scan.series_uid,
        "modality": scan.modality,
        "orientation": scan.orientation,
        "spacing_mm": tuple(round(s, 4) for s in scan.spacing),
        "shape": scan.shape,
        "source": scan.source,
        "contrast": contrast_text(window),
        WINDOW_KEY: window,
        "value_range": value_range(scan.voxels),
        "attributes": {k: _plain(v) for k, v in scan.attributes.items()},
    }
    kwargs = {
        "name": prefix + scan_name(scan, index),
        "affine": affine,
        "contrast_limits": limits,
        "colormap": "gray",
        "metadata": metadata,
        "visible": visible,
        "axis_labels": AXIS_LABELS,
        "interpolation2d": "linear",
    }
    return (view.apply(scan.voxels), kwargs, "image")


def study_layer_data(study: Study, prefix: str = "") -> list[tuple]:
    """All scans of a study; only the first is visible, since every scan fills the same patient space."""
    return [scan_layer_data(study, i, visible=(i == 0), prefix=prefix) for i in range(len(study.scans))]


def relevance_colormap():
    """Transparent at zero, then dark red -> yellow: only what the model looks at is coloured."""
    from napari.utils.colormaps import Colormap

    colors = np.array([[0.0, 0.0, 0.0, 0.0], [0.55, 0.0, 0.0, 1.0], [1.0, 0.45, 0.0, 1.0], [1.0, 1.0, 0.3, 1.0]])
    return Colormap(colors=colors, controls=[0.0, 0.33, 0.66, 1.0], name="hlip relevance")


def relevance_layer_data(study: Study, index: int, volume: np.ndarray, prompt: str, *,
                         threshold: float = 0.2, opacity: float = 0.6, colormap=None) -> tuple:
    """A relevance map (shaped like the scan's voxels, values in [0, 1]) over the scan it explains."""
    scan = study.scans[index]
    if tuple(volume.shape) != scan.shape:
        raise ValueError(f"relevance for scan {scan_name(scan, index)} has shape {volume.shape}, "
                         f"expected the scan's {scan.shape}")
    view, affine = layer_view(scan)
    kwargs = {
        "name": f"{prompt} · {scan_name(scan, index)}",
        "affine": affine,
        "contrast_limits": (threshold, 1.0),
        "colormap": colormap if colormap is not None else relevance_colormap(),
        "opacity": opacity,
        "blending": "translucent",
        "metadata": {STUDY_KEY: study, SCAN_KEY: index, KIND_KEY: "relevance", "prompt": prompt},
        "axis_labels": AXIS_LABELS,
        "interpolation2d": "linear",
    }
    return (view.apply(np.asarray(volume, dtype=np.float32)), kwargs, "image")


def add_studies(viewer, studies) -> list:
    """Add each study's scans to ``viewer`` (the first scan shown, the others hidden); returns the layers."""
    added = []
    for study in studies:
        prefix = f"{study.date or study.uid[-6:]} " if len(studies) > 1 else ""
        for data, kwargs, _kind in study_layer_data(study, prefix=prefix):
            added.append(viewer.add_image(data, **kwargs))
    if added:
        viewer.layers.selection.active = added[0]
        viewer.reset_view()
    return added


# plane -> (dims order: slider axis first, then the two displayed axes; 2-D camera orientation)
PLANES = {
    "axial": ((0, 1, 2), ("down", "right")),  # anterior up, patient's left on screen right
    "coronal": ((1, 0, 2), ("up", "right")),  # head up, patient's left on screen right
    "sagittal": ((2, 0, 1), ("up", "right")),  # head up, anterior on screen left
}


def show_plane(viewer, plane: str) -> None:
    """Look at the study in ``plane`` the way radiologists hang it (2-D view)."""
    order, orientation = PLANES[plane]
    viewer.dims.ndisplay = 2
    if viewer.dims.ndim == 3:
        viewer.dims.order = order
        viewer.camera.orientation2d = orientation
    viewer.reset_view()


def go_to(viewer, world_zyx, plane: str | None = None) -> None:
    """Move the sliders (and optionally the plane) so the view passes through a world point (S, P, L)."""
    if plane is not None:
        show_plane(viewer, plane)
    point = list(viewer.dims.point)
    for axis, value in enumerate(world_zyx[-len(point):]):
        point[axis] = float(value)
    viewer.dims.point = point


# --- the open study --------------------------------------------------------------------------------
def scan_layers(viewer, study: Study | None = None, kind: str = "scan") -> list:
    """Layers of ``kind`` in the viewer (of ``study`` when given), in layer-list order."""
    out = []
    for layer in viewer.layers:
        md = getattr(layer, "metadata", {}) or {}
        if md.get(KIND_KEY) == kind and (study is None or md.get(STUDY_KEY) is study):
            out.append(layer)
    return out


def open_study(viewer) -> Study | None:
    """The study the radiologist is looking at: the selected layer's, else the top-most study's."""
    active = viewer.layers.selection.active
    if active is not None and isinstance(active.metadata.get(STUDY_KEY), Study):
        return active.metadata[STUDY_KEY]
    for layer in reversed(list(viewer.layers)):
        study = (layer.metadata or {}).get(STUDY_KEY)
        if isinstance(study, Study):
            return study
    return None


NO_STUDY = "No study is open: open one in the Study browser (or File ▸ Open) first."


def open_study_or_warn(viewer, message: str = NO_STUDY) -> Study | None:
    """:func:`open_study`, or a napari warning that says what to do when there is none."""
    study = open_study(viewer)
    if study is None:
        from napari.utils.notifications import show_warning

        show_warning(message)
    return study
