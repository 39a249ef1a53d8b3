"""Putting a study on screen: one transaction, one patient at a time.

Every way a study arrives ends here: napari's File > Open and ``viewer.open`` (napari adds the layers the
reader returns; :func:`watch` sees them arrive), and the plugin's own widgets (Study browser, search hit,
PACS retrieve: :func:`show_study`). The transaction:

1. the new study's layer data is built first: if that fails, nothing on screen changes;
2. :meth:`OnScreen.begin`: work started for the old study is stale from now on;
3. the old study's layers (scans, overlays, rulers) leave the viewer; layers that are not the plugin's stay;
4. the new study's scans are added (the first shown, the others hidden), sliders mid-study, view framed;
5. :meth:`OnScreen.show`: ``study_changed`` once, and every widget re-renders from it.

Removing the study's last layer by hand empties the screen (``study_changed(None)``).
"""
from __future__ import annotations

import weakref

from hlip_engine.study import Study, StudyLoadError

from ._layers import KIND_KEY, STUDY_KEY, announce_study, study_label, study_layer_data, study_of
from ._on_screen import on_screen
from ._reading import reading
from ._view import mid_study, plugin_layers, scan_layers, unwrap

_WATCHED: weakref.WeakSet = weakref.WeakSet()
_OPENING: set[int] = set()  # viewers whose switch :func:`show_study` ends itself (after its batch of layers)


def watch(viewer) -> None:
    """Follow ``viewer``'s layer list so a study arriving by any path is one transaction (once per viewer)."""
    viewer = unwrap(viewer)
    reading(viewer).follow(on_screen(viewer))
    try:
        if viewer in _WATCHED:
            return
    except TypeError:  # not weak-referenceable: nothing to follow
        return
    _WATCHED.add(viewer)
    ref = weakref.ref(viewer)

    def inserted(event):
        v = ref()
        if v is not None:
            _arrived(v, event.value)

    def removed(event):
        v = ref()
        if v is not None:
            _left(v, event.value)

    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(removed)
    for layer in list(viewer.layers):  # a study already in the viewer (opened before the plugin watched)
        if study_of(layer) is not None and on_screen(viewer).study is None:
            _arrived(viewer, layer)


def _arrived(viewer, layer) -> None:
    """A layer came in. A scan of a study not on screen (napari adding the reader's layers) starts the
    switch; the study's last scan in ends it."""
    study = study_of(layer)
    screen = on_screen(viewer)
    if study is None or (layer.metadata or {}).get(KIND_KEY) != "scan":
        return
    if study is not screen.study and study is not screen.incoming:
        screen.begin(study)
        close_other_studies(viewer, study)
    if (study is screen.incoming and id(viewer) not in _OPENING
            and len(scan_layers(viewer, study)) >= len(study.scans)):
        _finish(viewer, study)


def _left(viewer, layer) -> None:
    screen = on_screen(viewer)
    if screen.switching or screen.study is None:
        return
    if study_of(layer) is screen.study and not plugin_layers(viewer, screen.study):
        screen.clear()


def _finish(viewer, study: Study) -> None:
    shown = scan_layers(viewer, study)
    mid_study(viewer, study)
    if shown and viewer.layers.selection.active is not shown[0]:  # napari made the last one in active
        viewer.layers.selection.active = shown[0]
    viewer.status = f"{study_label(study)} · {study.description or study.uid}"  # not the closed study's layer
    on_screen(viewer).show(study)


def close_other_studies(viewer, keep: Study | None, batch: bool = True) -> int:
    """Remove the layers of every study but ``keep`` (scans, overlays, rulers): one patient on screen. The
    3-up's crosshair moves on to ``keep`` (it is redrawn for it). Layers that are not the plugin's stay.
    ``batch``: in one ``batched_update`` (napari updates its scene, and collects garbage, once). Returns how
    many went."""
    others = [x for x in viewer.layers if study_of(x) is not None and study_of(x) is not keep]
    if keep is not None:
        for layer in [x for x in others if (x.metadata or {}).get(KIND_KEY) == "crosshair"]:
            relabel(layer, keep)
            others.remove(layer)
    if not others:
        return 0
    if not batch:
        for layer in others:
            viewer.layers.remove(layer)
        return len(others)
    with viewer.layers.batched_update():
        for layer in others:
            viewer.layers.remove(layer)
    return len(others)


def relabel(layer, study: Study) -> None:
    """A layer that outlives the study it was made for (the 3-up crosshair) now belongs to ``study``."""
    layer.metadata.update({STUDY_KEY: study, "study_uid": study.uid, "study_label": study_label(study)})
    layer.name = f"{study_label(study)} · {layer.name.split(' · ', 1)[-1]}"


def show_study(viewer, studies) -> list:
    """Show the first of ``studies`` (a folder may hold several: the others are named in a notification),
    closing the study on screen, as one transaction. Returns its scan layers. Raises
    :class:`StudyLoadError` (and changes nothing) when the study has no scan to show."""
    viewer = unwrap(viewer)
    studies = [s for s in studies if s.scans] + [s for s in studies if not s.scans]
    if not studies:
        raise StudyLoadError("nothing to show: no study was read")
    study, others = studies[0], studies[1:]
    data = study_layer_data(study)
    if not data:
        raise StudyLoadError(f"{study.source or study.uid}: no image scans to show ({why_empty(studies)})")
    watch(viewer)
    screen = on_screen(viewer)
    screen.begin(study)
    _OPENING.add(id(viewer))
    try:
        with viewer.layers.batched_update():  # one scene update for the closed study's layers and the new
            close_other_studies(viewer, study, batch=False)
            layers = [viewer.add_image(voxels, **kwargs) for voxels, kwargs, _kind in data]
    finally:
        _OPENING.discard(id(viewer))
    if screen.incoming is study:
        _finish(viewer, study)
    announce_study(study, others)
    return layers


def why_empty(studies) -> str:
    """What the loader skipped, in a few words, for a study with nothing to show."""
    reasons = "; ".join(f"{item}: {why}" for s in studies for item, why in s.skipped[:5])
    return reasons or "nothing readable"
