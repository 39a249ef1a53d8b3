"""Looking at the study in a viewer: which plane, which point, which layers are the study's, rulers.

Every function takes a napari viewer (or a 3-up plane's viewer model) and uses napari's public API only.
The study on screen is :mod:`._on_screen`'s, never guessed from the layer list.
"""
from __future__ import annotations

import numpy as np

from hlip_engine.study import Study

from ._layers import KIND_KEY, SCAN_KEY, STUDY_KEY, UNITS, study_label, study_of
from ._on_screen import on_screen

# plane -> (dims order: slider axis first, then the two displayed axes; 2-D camera orientation)
PLANES = {
    "axial": ((0, 1, 2), ("down", "right")),  # anterior up, patient's left on screen right
    "coronal": ((1, 0, 2), ("up", "right")),  # head up, patient's left on screen right
    "sagittal": ((2, 0, 1), ("up", "right")),  # head up, anterior on screen left
}
NO_STUDY = "No study is open: open one in the Study browser (or File ▸ Open) first."


def unwrap(viewer):
    """The viewer itself: npe2 hands widgets a proxy of it, whose identity differs from the viewer's."""
    seen = 0
    while hasattr(viewer, "__wrapped__") and seen < 5:
        viewer, seen = viewer.__wrapped__, seen + 1
    return viewer


def camera(viewer):
    """The 2-D/3-D camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def show_plane(viewer, plane: str) -> None:
    """Look at the study in ``plane`` the way radiologists hang it (2-D view)."""
    order, orientation = PLANES[plane]
    viewer.dims.ndisplay = 2
    if viewer.dims.ndim == 3:
        viewer.dims.order = order
        camera(viewer).orientation2d = orientation
    viewer.reset_view()


def go_to(viewer, world_zyx, plane: str | None = None) -> None:
    """Move the sliders (and optionally the plane) so the view passes through a world point (S, P, L)."""
    if plane is not None:
        show_plane(viewer, plane)
    point = list(viewer.dims.point)
    for axis, value in enumerate(world_zyx[-len(point):]):
        point[axis] = float(value)
    viewer.dims.point = point


def mid_study(viewer, study: Study) -> None:
    """Sliders in the middle of ``study``'s scans (where a study opens), the view framing it."""
    layers = scan_layers(viewer, study)
    if not layers:
        return
    lo = np.min([np.asarray(x.extent.world, dtype=float)[0] for x in layers], axis=0)
    hi = np.max([np.asarray(x.extent.world, dtype=float)[1] for x in layers], axis=0)
    go_to(viewer, (lo + hi) / 2)
    viewer.reset_view()


def scan_layers(viewer, study: Study | None = None, kind: str = "scan") -> list:
    """Layers of ``kind`` in the viewer (of ``study`` when given), in the study's scan order."""
    return of_kind(viewer.layers, kind, study)


def of_kind(layers, kind: str = "scan", study: Study | None = None) -> list:
    """The ``layers`` of ``kind`` (of ``study`` when given) in the study's scan order, whatever the list's order."""
    out = [layer for layer in layers if (md := getattr(layer, "metadata", {}) or {}).get(KIND_KEY) == kind
           and (study is None or md.get(STUDY_KEY) is study)]
    return sorted(out, key=lambda x: (x.metadata or {}).get(SCAN_KEY, len(out)))


def open_study(viewer) -> Study | None:
    """The study the radiologist is looking at (the viewer's :class:`OnScreen`)."""
    return on_screen(unwrap(viewer)).study


def open_study_or_warn(viewer, message: str = NO_STUDY) -> Study | None:
    """:func:`open_study`, or a napari warning that says what to do when there is none."""
    study = open_study(viewer)
    if study is None:
        from napari.utils.notifications import show_warning

        show_warning(message)
    return study


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


def plugin_layers(viewer, study: Study | None = None) -> list:
    """The plugin's layers (those holding a study), of ``study`` when given."""
    return [x for x in viewer.layers if study_of(x) is not None and (study is None or study_of(x) is study)]
