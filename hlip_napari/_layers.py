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

import logging
import warnings
import weakref
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

from ._garbage import note_work, remove_layers  # removals collected once the reader is quiet

AXIS_LABELS = ("I-S", "A-P", "R-L")
STUDY_KEY = "hlip_study"  # layer.metadata key holding the Study a scan layer came from
SCAN_KEY = "hlip_scan"  # layer.metadata key holding the scan's index in Study.scans
KIND_KEY = "hlip_kind"  # "scan" or "relevance"
WINDOW_KEY = "hlip_window"  # layer.metadata key: the CT preset name shown, or None for MR percentiles
MR_AUTO_TEXT = "auto (0.5-99.5 %)"
LOG = logging.getLogger("hlip_napari")
OBLIQUE_NOTE = ("oblique scan: the 2-D view shows the nearest plane (napari leaves the few degrees of tilt out of "
                "the slice); every voxel keeps its exact patient position, and the 3-D view shows the tilt")
# napari says "Non-orthogonal slicing is being requested" as a toast for every oblique scan; what it means is
# said once per scan in the log and in the layer's metadata ("note") instead
warnings.filterwarnings("ignore", message="Non-orthogonal slicing is being requested", category=UserWarning)
UNITS = ("mm", "mm", "mm")  # the affines are in mm: napari's scale bar and rulers then read mm


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
def study_date(study: Study) -> str:
    d = study.date or ""
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else d


def study_label(study: Study) -> str:
    """A short label that says whose a layer is: the study's date and modality (its UID's tail when undated)."""
    when = study_date(study) or (f"…{study.uid[-6:]}" if study.uid else "study")
    return f"{when} {study.modality}".strip()


def patient_age(study: Study) -> str:
    """Age at the study ("67 y", "8 mo") from the birth date; "" when either date is unknown."""
    born, seen = study.patient.birth_date or "", study.date or ""
    if not (len(born) == 8 and born.isdigit() and len(seen) == 8 and seen.isdigit()):
        return ""
    by, bm, bd, sy, sm, sd = int(born[:4]), int(born[4:6]), int(born[6:]), int(seen[:4]), int(seen[4:6]), int(seen[6:])
    months = (sy - by) * 12 + (sm - bm) - (1 if sd < bd else 0)
    if months < 0:
        return ""
    return f"{months // 12} y" if months >= 24 else f"{months} mo"


def study_header(study: Study, identifiers: bool = False) -> str:
    """The study line a reader checks before reading: description, date, age, sex, modality, scans.

    Identifiers (name, patient ID) only when asked for: screenshots and screen shares stay de-identified."""
    parts = [study.description or "Study", study_date(study) or "date unknown", study.modality or "?"]
    age, sex = patient_age(study), (study.patient.sex or "").upper()
    parts.append(" ".join(x for x in (age, {"M": "male", "F": "female", "O": "other"}.get(sex, sex)) if x)
                 or "age/sex unknown")
    line = "  ·  ".join(parts)
    if identifiers:
        line += f"\n{study.patient.name or '(no name)'}  ·  ID {study.patient.id or '?'}  ·  UID {study.uid}"
    return line


def scan_warnings(scan: Scan) -> list[str]:
    """What the loader had to do to this scan (filled slices, resampled tilt, cut gaps), as it recorded it."""
    return [str(w) for w in scan.attributes.get("warnings", []) or []]


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


def scan_layer_data(study: Study, index: int, *, visible: bool = True, prefix: str | None = None) -> tuple:
    """One scan as a napari ``(data, kwargs, "image")`` tuple, placed in patient space.

    The name starts with the study's label (``prefix`` overrides it) so no layer is anonymous."""
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
        "study_label": study_label(study),
        "warnings": scan_warnings(scan),
        "contrast": contrast_text(window),
        WINDOW_KEY: window,
        "value_range": value_range(scan.voxels),
        "attributes": {k: _plain(v) for k, v in scan.attributes.items()},
    }
    lin = affine[:3, :3]
    if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6):
        metadata["note"] = OBLIQUE_NOTE
        LOG.info("%s: %s", scan_name(scan, index), OBLIQUE_NOTE)
    kwargs = {
        "name": f"{study_label(study) if prefix is None else prefix} · {scan_name(scan, index)}",
        "affine": affine,
        "contrast_limits": limits,
        "colormap": "gray",
        "metadata": metadata,
        "visible": visible,
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        "interpolation2d": "linear",
    }
    return (view.apply(scan.voxels), kwargs, "image")


def study_layer_data(study: Study, prefix: str | None = None) -> list[tuple]:
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
        "name": f"{study_label(study)} · {prompt} · {scan_name(scan, index)}",
        "affine": affine,
        "contrast_limits": (threshold, 1.0),
        "colormap": colormap if colormap is not None else relevance_colormap(),
        "opacity": opacity,
        "blending": "translucent",
        "metadata": {STUDY_KEY: study, SCAN_KEY: index, KIND_KEY: "relevance", "prompt": prompt,
                     "study_uid": study.uid, "series_uid": scan.series_uid, "study_label": study_label(study)},
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        "interpolation2d": "linear",
    }
    return (view.apply(np.asarray(volume, dtype=np.float32)), kwargs, "image")


def study_of(layer) -> Study | None:
    study = (getattr(layer, "metadata", None) or {}).get(STUDY_KEY)
    return study if isinstance(study, Study) else None


def close_other_studies(viewer, keep: Study) -> list[str]:
    """Remove the layers of every study but ``keep`` (scans, overlays, rulers): one patient on screen.

    Layers that are not the plugin's (no study in their metadata) stay. Returns the labels closed."""
    closed, gone = [], []
    for layer in list(viewer.layers):
        study = study_of(layer)
        if study is not None and study is not keep:
            gone.append(layer)
            if study_label(study) not in closed:
                closed.append(study_label(study))
    if gone:
        remove_layers(viewer, gone)
    return closed


def loader_notes(study: Study) -> list[str]:
    """One line per scan the loader changed: "2 HEAD AX: 1 missing slice(s) filled by linear interpolation"."""
    return [f"{scan_name(scan, i)}: {w}" for i, scan in enumerate(study.scans) for w in scan_warnings(scan)]


def announce_study(study: Study, others=()) -> None:
    """The notifications a study opens with: what the loader filled, resampled or cut, and the other
    studies of a folder that holds several."""
    from napari.utils.notifications import show_info, show_warning

    notes = loader_notes(study)
    if notes:
        show_warning(f"{study_label(study)} {study.description}: the loader changed {len(notes)} scan(s); "
                     "check before reading:\n" + "\n".join(notes))
    if others:
        show_info(f"This folder holds {len(others) + 1} studies; showing {study_label(study)} "
                  f"({study.description or study.uid}). Open the others one at a time: "
                  + "; ".join(f"{study_label(s)} {s.description} ({s.source})" for s in others))


def add_studies(viewer, studies, *, replace: bool = True) -> list:
    """Show a study's scans (the first shown, the others hidden) in ``viewer``; returns the layers.

    replace: close the study on screen first (the default: one patient at a time). A folder holding
    several studies shows the first; the others are named in a notification (open them one by one)."""
    studies = list(studies)
    if not studies:
        return []
    study, others = studies[0], studies[1:]
    from ._reading import reading

    reading(viewer)  # the one-study guard and the PACS mouse, for whichever path added the study
    if replace:
        close_other_studies(viewer, study)
    added = [viewer.add_image(data, **kwargs) for data, kwargs, _kind in study_layer_data(study)]
    announce_study(study, others)
    if added:
        viewer.layers.selection.active = added[0]
        viewer.reset_view()
    return added


TURN_MS = 10  # ms between steps: a mouse event that came during a step's repaint is handled before the next
RESIZED_MS = 100  # after a step that resized the canvas (its most costly repaint, in software GL)


def later(step, ms: int | None = None) -> None:
    """Run ``step`` on a later event-loop turn, after the input and repaints waiting: by a timer ``TURN_MS``
    ahead, which Qt's GLib event loop runs at idle priority once it has fired (``runWithIdlePriority``), not a
    posted event (``singleShot(0)``), which it runs first: a chain of posted events kept a mouse event
    waiting for two steps and their repaints (measured with bench/gui_latency.py's XTest pointer)."""
    from qtpy.QtCore import QTimer

    def run():
        note_work()  # not quiet: a deferred garbage collection waits (_garbage.py)
        step()

    QTimer.singleShot(TURN_MS if ms is None else ms, run)


def add_gradually(viewer, layer_data, on_done=None, remove=(), update=(), remove_first: bool = False,
                  regrid: bool = False) -> None:
    """Update the layers of ``update`` (``(layer, (data, kwargs, "image"))`` pairs: new data, name and
    metadata in a layer already on screen; on a new grid too when ``regrid``), add ``(data, kwargs, "image")``
    tuples, then remove the layers ``remove``; one step per event-loop turn (the removals in one batch,
    first when ``remove_first``); then call ``on_done(layers)`` with the updated and added layers still in
    the viewer, in that order.

    Why: each insert or removal costs napari a redraw and a layer-controls panel (40-400 ms on a 2-core
    machine with software OpenGL), and each batch of removals a full garbage collection (deferred until the
    reader is quiet: _garbage.py); four in one go freeze the viewer for a second or more. An update in
    place costs neither. Each step is a timer (:func:`later`): the reader's input between two steps is
    handled before the next."""
    pending, added, gone, todo = list(layer_data), [], list(remove), list(update)
    from ._reading import unwrap

    key = id(unwrap(viewer))
    _SHOWING[key] = _SHOWING.get(key, 0) + 1

    def remove_all():
        remove_layers(viewer, gone)
        gone.clear()

    def next_one():
        if remove_first and gone:
            remove_all()
            later(next_one)
            return
        if todo:
            layer, (data, kwargs, _kind) = todo.pop(0)
            if layer in viewer.layers:
                update_layer(layer, data, kwargs, regrid=regrid)
                added.append(layer)
            else:
                pending.insert(0, (data, kwargs, _kind))
            later(next_one)
            return
        if pending and viewer.dims.ndim < np.ndim(pending[0][0]):
            # an empty viewer's first 3-D layer: its slider and the canvas resized for it (a synchronous
            # redraw) in a turn of their own, not on top of the layer's panel and visual
            viewer.dims.ndim = np.ndim(pending[0][0])
            later(next_one, RESIZED_MS)  # the window's repaint at its new size first, and the input after it
            return
        if pending:
            data, kwargs, _kind = pending.pop(0)
            # added hidden and without its controls panel (18-40 ms), which comes on the next turn, and it is
            # shown on the one after: its visual, its panel and its first draw (which builds its GL programs)
            # then come in three turns, not one; and not made the active layer (napari's default on insert:
            # its controls panel shown, 10-30 ms a layer): ``on_done`` selects one, once
            layer = _insert_quietly(viewer, data, {**kwargs, "visible": False})
            added.append(layer)

            def show_then_go_on():
                if layer in viewer.layers and kwargs.get("visible", True):
                    layer.visible = True
                later(next_one)

            def controls_then_show():
                late_controls(viewer, layer)
                later(show_then_go_on)

            later(controls_then_show)
            return
        if gone:
            remove_all()
            later(next_one)
            return
        _SHOWING[key] -= 1
        if not _SHOWING[key]:
            del _SHOWING[key]
        if on_done is not None:  # the layers still there (the reader may have closed some on the way)
            on_done([layer for layer in added if layer in viewer.layers])

    later(next_one)


_SHOWING: dict[int, int] = {}  # id(the viewer itself) -> layer batches on their way in (add_gradually)


def arriving(viewer) -> bool:
    """Whether layers are still arriving in ``viewer`` one per turn: a panel that mirrors the layers can
    wait for the last (each refresh on the way costs a repaint)."""
    from ._reading import unwrap

    return id(unwrap(viewer)) in _SHOWING


def _insert_quietly(viewer, data, kwargs):
    """``viewer.add_image`` without making the new layer the active one (napari's ``_activate_on_insert``,
    on the viewer itself, not npe2's proxy of it, which warns on private names) and without building its
    controls panel, which :func:`late_controls` builds on a later turn. A napari without either adds the
    layer as usual."""
    from ._reading import unwrap

    real = unwrap(viewer)
    layers = real.layers
    controls = _controls_container(real)
    before = getattr(layers, "_activate_on_insert", None)
    if before is not None:
        layers._activate_on_insert = False
    try:
        if controls is None:
            return viewer.add_image(data, **kwargs)
        with layers.events.inserted.blocker(controls._add):
            layer = viewer.add_image(data, **kwargs)
        _LATE_CONTROLS.setdefault(controls, []).append(layer)
        return layer
    finally:
        if before is not None:
            layers._activate_on_insert = before


# napari's layer-controls container (a QStackedWidget of one panel per layer) -> the layers whose panel
# :func:`_insert_quietly` left for a later turn
_LATE_CONTROLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _PanelsOnDemand(dict):
    """napari's ``container.widgets`` (layer -> its controls panel), building a panel still to come when napari
    looks it up: a layer selected or removed (a click) before the turn that builds its panel gets it then."""

    def __init__(self, container, panels):
        super().__init__(panels)
        self._container = weakref.ref(container)

    def __missing__(self, layer):
        container = self._container()
        pending = _LATE_CONTROLS.get(container, []) if container is not None else []
        if not any(x is layer for x in pending):
            raise KeyError(layer)
        _build_panel(container, layer)  # even for a layer already removed: napari's removal looks its panel up
        return dict.__getitem__(self, layer)


def _controls_container(viewer):
    """The main window's layer-controls container, when the viewer has one built and napari still builds a
    panel per layer on insert (its ``_add``) into its ``widgets`` dict; None for a 3-up plane's viewer model
    or another napari."""
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    container = getattr(qt_viewer, "_controls", None)
    if not callable(getattr(container, "_add", None)) or type(getattr(container, "widgets", None)) not in (
            dict, _PanelsOnDemand):
        return None
    if type(container.widgets) is dict:
        container.widgets = _PanelsOnDemand(container, container.widgets)
    return container


def late_controls(viewer, layer=None) -> None:
    """Build the controls panels :func:`_insert_quietly` left out (``layer``'s, or all still missing)."""
    from ._reading import unwrap

    controls = _controls_container(unwrap(viewer))
    pending = _LATE_CONTROLS.get(controls, []) if controls is not None else []
    for waiting in [x for x in pending if layer is None or x is layer]:
        if waiting in unwrap(viewer).layers:
            _build_panel(controls, waiting)
        else:  # removed meanwhile (its panel built then, if napari asked for it)
            pending.remove(waiting)


def _build_panel(container, layer) -> None:
    from types import SimpleNamespace

    pending = _LATE_CONTROLS.get(container, [])
    pending[:] = [x for x in pending if x is not layer]
    if not dict.__contains__(container.widgets, layer):
        container._add(SimpleNamespace(value=layer))


def update_layer(layer, data, kwargs, regrid: bool = False) -> None:
    """Give an image layer on screen new voxels and the name, metadata, contrast and visibility of
    ``kwargs``: on the same scan grid (same affine), or on the grid of ``kwargs`` when ``regrid`` (another
    study's scan taking over the layer: a layer re-used costs napari no new panel and no removal)."""
    affine = kwargs.get("affine")
    same = affine is None or np.allclose(np.asarray(layer.affine.affine_matrix), np.asarray(affine), atol=1e-9)
    if not same and not regrid:
        raise ValueError(f"{layer.name}: an update in place keeps the layer's grid")
    layer.data = data
    if regrid and affine is not None:
        # after the data, and even when unchanged: napari recomputes a hidden layer's extent on an affine
        # change only, not on new data (a hidden scan kept the closed study's extent, and the sliders with it)
        layer.affine = affine
    layer.name = kwargs.get("name", layer.name)
    layer.metadata.clear()
    layer.metadata.update(kwargs.get("metadata") or {})
    if regrid:
        layer.reset_contrast_limits_range()  # the new voxels' range (a CT after an MR), before the limits
    for key in (("colormap", "blending", "interpolation2d") if regrid else ()) + ("contrast_limits", "opacity",
                                                                                  "visible"):
        if key in kwargs and not _same_setting(getattr(layer, key), kwargs[key]):
            setattr(layer, key, kwargs[key])  # only what changed: a colour map set again rebuilds a GL program


def _same_setting(now, wanted) -> bool:
    if hasattr(now, "name") and not isinstance(wanted, (tuple, list, np.ndarray)):  # a colour map (or its name)
        return now.name == getattr(wanted, "name", wanted)
    if isinstance(wanted, (tuple, list, np.ndarray)):
        return np.shape(now) == np.shape(wanted) and bool(np.allclose(now, wanted))
    return str(now) == str(wanted) if not isinstance(wanted, (bool, float, int)) else now == wanted


def relabel(layer, study: Study) -> None:
    """A layer that outlives the study it was made for (the 3-up crosshair) now belongs to ``study``."""
    layer.metadata.update({STUDY_KEY: study, "study_uid": study.uid, "study_label": study_label(study)})
    layer.name = f"{study_label(study)} · {layer.name.split(' · ', 1)[-1]}"


def show_study_gradually(viewer, studies, on_done=None) -> None:
    """:func:`add_studies` without freezing the viewer: the study on screen closes, then the new study's
    scans arrive one per event-loop turn; ``on_done(layers)`` once all are in.

    The closed study's scan layers take the new study's scans in place (new voxels, grid, name and
    metadata): napari then builds no new layer panel and collects no garbage for them; its overlays,
    rulers and surplus scans go in one batch."""
    studies = list(studies)
    if not studies:
        return
    from napari.layers import Image

    from ._reading import reading

    study, others = studies[0], studies[1:]
    reading(viewer)
    gone = [layer for layer in viewer.layers if study_of(layer) is not None and study_of(layer) is not study]
    for layer in [x for x in gone if x.metadata.get(KIND_KEY) == "crosshair"]:  # the 3-up's: moves on with us
        gone.remove(layer)
        relabel(layer, study)
    scans = [layer for layer in gone if isinstance(layer, Image) and layer.metadata.get(KIND_KEY) == "scan"]
    new = study_layer_data(study)
    update = list(zip(scans, new))
    taken = {id(layer) for layer, _t in update}
    announce_study(study, others)

    def finish(added):
        if added:
            viewer.layers.selection.active = added[0]
            if update:  # layers taken over keep the sliders where the closed study was: start mid-study,
                world = np.asarray(viewer.layers.extent.world, dtype=float)  # as a study opened anew does
                viewer.dims.point = tuple(world.mean(axis=0))
            viewer.reset_view()
        reading(viewer).study_shown()
        if on_done is not None:
            on_done(added)

    add_gradually(viewer, new[len(update):], finish, remove=[x for x in gone if id(x) not in taken],
                  update=update, remove_first=True, regrid=True)


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


# --- measuring -------------------------------------------------------------------------------------
def line_lengths_mm(lines) -> list[float]:
    """Length (mm) of each line of a shapes layer drawn in world coordinates (our world is mm)."""
    return [float(np.linalg.norm(np.asarray(line, dtype=float)[-1] - np.asarray(line, dtype=float)[0]))
            for line in lines]


def add_ruler(viewer, study: Study | None = None):
    """A shapes layer in line mode whose lines show their length in mm (the study's, closed with it)."""
    ndim = max(viewer.dims.ndim, 3)
    metadata = {KIND_KEY: "ruler"}
    if study is not None:
        metadata.update({STUDY_KEY: study, "study_uid": study.uid, "series_uid": "",
                         "study_label": study_label(study)})
    name = f"{study_label(study)} · ruler" if study is not None else "ruler"
    layer = viewer.add_shapes(ndim=ndim, name=name, shape_type="line", edge_color="#ffd54f", edge_width=0.6,
                              features={"length": np.zeros(0)}, feature_defaults={"length": 0.0},
                              text={"string": "{length:.1f} mm", "color": "#ffd54f", "size": 11,
                                    "anchor": "upper_left"},
                              metadata=metadata, units=UNITS[:1] * ndim)

    def _measure(*_args):
        lengths = line_lengths_mm(layer.data)
        if list(layer.features.get("length", [])) != lengths:
            layer.features = {"length": np.asarray(lengths, dtype=float)}

    layer.events.data.connect(_measure)
    layer.mode = "add_line"
    viewer.layers.selection.active = layer
    return layer
