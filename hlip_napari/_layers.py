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

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from hlip_engine.study import Scan, Study

AXIS_LABELS = ("I-S", "A-P", "R-L")
STUDY_KEY = "hlip_study"  # layer.metadata key holding the Study a scan layer came from
SCAN_KEY = "hlip_scan"  # layer.metadata key holding the scan's index in Study.scans
KIND_KEY = "hlip_kind"  # "scan" or "relevance"
MR_PERCENTILES = (0.5, 99.5)  # the paper's MR clipping, a good auto-contrast too


# --- geometry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Orientation:
    """How to turn a scan's (slice, row, col) array into world-aligned (z, y, x) order.

    order : which source axis becomes world axis 0, 1, 2.
    flip : per world axis, whether that axis is reversed.
    affine : 4x4, reoriented array index -> world (S, P, L) mm.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    affine: np.ndarray

    def apply(self, array: np.ndarray) -> np.ndarray:
        """A view of ``array`` (shaped like the scan's voxels) in world-aligned order."""
        out = np.transpose(array, self.order)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]


def orientation_of(scan: Scan) -> Orientation:
    """The axis permutation + flips that align ``scan`` with world axes, and the resulting affine."""
    a = scan.affine_zyx  # source (slice, row, col) -> world (S, P, L)
    lin = a[:3, :3]
    order = [-1, -1, -1]
    # greedy: the world axis each source axis runs along most, strongest first (oblique-safe)
    strength = np.abs(lin / np.maximum(np.linalg.norm(lin, axis=0, keepdims=True), 1e-12))
    taken_w, taken_s = set(), set()
    for flat in np.argsort(-strength, axis=None):
        w, s = divmod(int(flat), 3)
        if w in taken_w or s in taken_s:
            continue
        order[w] = s
        taken_w.add(w)
        taken_s.add(s)
    flip = tuple(bool(lin[w, order[w]] < 0) for w in range(3))
    shape = scan.voxels.shape
    # new index n -> source index: src[order[w]] = n[w] (or shape - 1 - n[w] when flipped)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for w in range(3):
        s = order[w]
        if flip[w]:
            m[s, w] = -1.0
            m[s, 3] = shape[s] - 1
        else:
            m[s, w] = 1.0
    return Orientation(tuple(order), flip, a @ m)


# --- contrast --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def window_presets() -> dict[str, dict[str, float]]:
    """CT window presets (width, level in HU) named as radiologists name them."""
    text = resources.files("hlip_engine").joinpath("data/window_presets.json").read_text()
    return {k: v for k, v in json.loads(text)["CT"].items() if not k.startswith("_")}


def window_limits(name: str) -> tuple[float, float]:
    p = window_presets()[name]
    return (p["level"] - p["width"] / 2.0, p["level"] + p["width"] / 2.0)


def _sample(voxels: np.ndarray, n: int = 200_000) -> np.ndarray:
    """A strided subsample: percentiles of a 300-slice series in milliseconds, not seconds."""
    step = max(1, int(round((voxels.size / n) ** (1 / 3))))
    return np.asarray(voxels[::step, ::step, ::step], dtype=np.float32).ravel()


def auto_limits(voxels: np.ndarray, percentiles=MR_PERCENTILES) -> tuple[float, float]:
    """Percentile auto-contrast (MR has no absolute units)."""
    s = _sample(voxels)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(s, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return (float(lo), float(hi))


def value_range(voxels: np.ndarray) -> tuple[float, float]:
    s = _sample(voxels, 400_000)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (0.0, 1.0)
    lo, hi = float(s.min()), float(s.max())
    return (lo, hi if hi > lo else lo + 1.0)


def default_ct_window(scan: Scan, study: Study | None = None) -> str:
    """The window a radiologist opens this CT in: brain for heads, lung/mediastinum for chests."""
    words = " ".join(str(x) for x in (
        scan.description, scan.attributes.get("BodyPartExamined", ""), scan.attributes.get("ConvolutionKernel", ""),
        study.description if study else "")).lower()
    if any(k in words for k in ("head", "brain", "skull", "cran", "neuro", "stroke")):
        return "Brain"
    if "lung" in words:
        return "Lung"
    if any(k in words for k in ("chest", "thorax", "thorac", "pulm")):
        return "Mediastinum"
    if any(k in words for k in ("abd", "pelvi", "liver")):
        return "Abdomen"
    return "Soft tissue"


def default_limits(scan: Scan, study: Study | None = None) -> tuple[tuple[float, float], str]:
    """(contrast limits, how they were chosen) for a scan: a CT window preset or MR percentiles."""
    if (scan.modality or "").upper() == "CT":
        name = default_ct_window(scan, study)
        return window_limits(name), f"CT {name}"
    return auto_limits(scan.voxels), "auto (0.5-99.5 %)"


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
    orient = orientation_of(scan)
    limits, how = default_limits(scan, study)
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
        "contrast": how,
        "value_range": value_range(scan.voxels),
        "attributes": {k: _plain(v) for k, v in scan.attributes.items()},
    }
    kwargs = {
        "name": prefix + scan_name(scan, index),
        "affine": orient.affine,
        "contrast_limits": limits,
        "colormap": "gray",
        "metadata": metadata,
        "visible": visible,
        "axis_labels": AXIS_LABELS,
        "interpolation2d": "linear",
    }
    return (orient.apply(scan.voxels), kwargs, "image")


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
    orient = orientation_of(scan)
    kwargs = {
        "name": f"{prompt} · {scan_name(scan, index)}",
        "affine": orient.affine,
        "contrast_limits": (threshold, 1.0),
        "colormap": colormap if colormap is not None else relevance_colormap(),
        "opacity": opacity,
        "blending": "translucent",
        "metadata": {STUDY_KEY: study, SCAN_KEY: index, KIND_KEY: "relevance", "prompt": prompt},
        "axis_labels": AXIS_LABELS,
        "interpolation2d": "linear",
    }
    return (orient.apply(np.asarray(volume, dtype=np.float32)), kwargs, "image")


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
