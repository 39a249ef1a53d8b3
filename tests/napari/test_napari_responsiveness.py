"""What keeps the viewer answering the reader's hand while studies come and go (bench/gui_latency.py has the
figures): removals without napari's full collection on the reader's time, the browser and the 3-up planes
updated once a study is in (not per layer), napari's first-layer costs paid while idle."""
from __future__ import annotations

import gc
import sys
import time
import weakref

import numpy as np
import pytest
from napari_helpers import tiny_study
from qtpy.QtCore import QPoint, QPointF, Qt
from qtpy.QtGui import QWheelEvent
from qtpy.QtWidgets import QApplication

from hlip_napari import _garbage
from hlip_napari._layers import STUDY_KEY, scan_layers, show_study_gradually


class Holder:
    """Stands for a study in a layer's metadata: weakly referenceable, holding voxels."""

    def __init__(self):
        self.voxels = np.ones((8, 32, 32), np.float32)


@pytest.fixture
def counted_collections(monkeypatch):
    """Full collections run while the test runs (napari's in its canvas, and the plugin's)."""
    real, calls = gc.collect, []

    def collect(*args, **kwargs):
        calls.append(time.perf_counter())
        return real(*args, **kwargs)

    monkeypatch.setattr(gc, "collect", collect)
    if _garbage.waiting():
        _garbage.collector().run()
    calls.clear()
    yield calls
    if _garbage.waiting():
        _garbage.collector().run()


def _overlay(viewer, holder):
    layer = viewer.add_image(np.zeros((8, 32, 32), np.float32), name="overlay",
                             metadata={STUDY_KEY: holder, "hlip_kind": "relevance"})
    QApplication.processEvents()
    return layer


@pytest.mark.skipif(sys.platform == "win32", reason="on Windows napari's own collection is kept, tested below")
def test_a_removal_frees_the_study_at_once_and_collects_the_rest_when_the_reader_is_quiet(
        make_napari_viewer, qtbot, counted_collections, monkeypatch):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="scan")
    holder = Holder()
    study, layer = weakref.ref(holder), weakref.ref(_overlay(viewer, holder))
    del holder
    gc.disable()  # no automatic collection may free anything below: reference counting only
    try:
        _garbage.remove_layers(viewer, [layer()])
        assert counted_collections == []  # napari's full collection did not run on the reader's time
        assert study() is None  # the closed study (and its voxels) went at once
        assert _garbage.waiting()
        col = _garbage.collector()
        # a wheel turned by the reader: the collection waits for quiet
        native = viewer.window._qt_viewer.canvas.native
        before = col.last_input
        c = QPointF(native.width() / 2, native.height() / 2)
        QApplication.sendEvent(native, QWheelEvent(c, native.mapToGlobal(c), QPoint(0, 0), QPoint(0, 120),
                                                   Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                                                   Qt.ScrollPhase.NoScrollPhase, False))
        assert col.last_input > before
        col._check()
        assert _garbage.waiting() and counted_collections == []
        # quiet for QUIET_S: it runs, and the removed layer's cycles are gone
        col.last_input = time.monotonic() - _garbage.QUIET_S - 0.01
        col._check()
    finally:
        gc.enable()
    assert not _garbage.waiting() and len(counted_collections) == 1
    assert layer() is None


@pytest.mark.skipif(sys.platform == "win32", reason="the deferral is off on Windows")
def test_the_collection_waits_no_longer_than_latest_s_and_runs_by_itself(make_napari_viewer, qtbot,
                                                                          counted_collections, monkeypatch):
    """Never longer than LATEST_S after the removal, however busy the reader."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="scan")
    _garbage.remove_layers(viewer, [_overlay(viewer, Holder())])
    col = _garbage.collector()
    col.last_input = time.monotonic()  # the reader busy...
    col.due = time.monotonic() - 0.01  # ...but the latest time has come
    col._check()
    assert not _garbage.waiting() and len(counted_collections) == 1
    # left alone, the timer runs it once the reader is quiet
    monkeypatch.setattr(_garbage, "QUIET_S", 0.2)
    _garbage.remove_layers(viewer, [_overlay(viewer, Holder())])
    assert _garbage.waiting()
    qtbot.waitUntil(lambda: not _garbage.waiting(), timeout=10_000)
    assert len(counted_collections) == 2


def test_on_windows_napari_collects_at_once_as_it_does(make_napari_viewer, counted_collections, monkeypatch):
    monkeypatch.setattr(_garbage, "deferring", lambda: False)  # as on Windows
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="scan")
    overlay = _overlay(viewer, Holder())
    _garbage.remove_layers(viewer, [overlay])
    assert overlay not in viewer.layers
    assert len(counted_collections) == 1 and not _garbage.waiting()  # napari's own, at once


def test_the_browser_lists_an_arriving_study_once_and_the_3up_hangs_it_once(make_napari_viewer, qtbot):
    """Layers arrive one per event-loop turn; the browser's table and the 3-up planes are each refreshed
    once, when the last is in (each refresh on the way was a repaint)."""
    from hlip_napari._launch import dock_widgets
    from hlip_napari._qt.hanging import PlaneCanvas

    viewer = make_napari_viewer(show=True)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    hanging = dock_widgets(viewer, ("3-up hanging",))["3-up hanging"]
    fills, hangs = [], []
    real_fill = browser._fill
    browser._fill = lambda study, layers: (fills.append((study, len(layers))), real_fill(study, layers))[-1]
    real_steps = PlaneCanvas.hanging_steps

    def hanging_steps(canvas, layers, plane):
        hangs.append((plane, len(layers)))
        return real_steps(canvas, layers, plane)

    PlaneCanvas.hanging_steps = hanging_steps
    try:
        study = tiny_study()
        done = []
        show_study_gradually(viewer, [study], done.append)
        qtbot.waitUntil(lambda: bool(done) and not hanging._pending and browser.study is study, timeout=30_000)
        for _ in range(10):
            qtbot.wait(10)
        assert len(scan_layers(viewer, study)) == len(study.scans)
        assert [f for f in fills if f[0] is study] == [(study, len(study.scans))]
        assert sorted(p for p, _n in hangs) == ["coronal", "sagittal"]  # each plane hung once
        assert browser.table.rowCount() == len(study.scans)
    finally:
        PlaneCanvas.hanging_steps = real_steps
        hanging.close_canvases()
        qtbot.wait(50)


def test_overlays_and_scans_arrive_without_taking_the_active_layer_each(make_napari_viewer, qtbot):
    """napari makes each inserted layer the active one (its controls panel shown: 10-30 ms each); the plugin
    adds a study's layers quietly and selects one when all are in."""
    viewer = make_napari_viewer(show=True)
    actives = []
    viewer.layers.selection.events.active.connect(lambda e: actives.append(e.value))
    study = tiny_study()
    done = []
    show_study_gradually(viewer, [study], done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    layers = scan_layers(viewer, study)
    assert viewer.layers.selection.active is layers[0]
    assert [a for a in actives if a is not None] == [layers[0]]


def test_a_layers_controls_panel_comes_on_a_turn_of_its_own_and_is_there_when_napari_needs_it(
        make_napari_viewer, qtbot):
    """napari builds a layer's controls panel in the insert (18-40 ms); the plugin builds it on the next
    turn, and at once when the layer is selected or removed before that turn came."""
    from hlip_napari._layers import _insert_quietly, late_controls, study_layer_data

    viewer = make_napari_viewer(show=True)
    controls = viewer.window._qt_viewer.controls
    study = tiny_study()
    (data, kwargs, _k), *_ = study_layer_data(study)
    first = _insert_quietly(viewer, data, kwargs)
    second = _insert_quietly(viewer, data, {**kwargs, "name": "second"})
    assert first in viewer.layers and first not in controls.widgets and second not in controls.widgets
    viewer.layers.selection.active = first  # a click on its row before its panel came: built first, shown
    assert controls.currentWidget() is controls.widgets[first]
    viewer.layers.remove(second)  # removed before its panel came: napari's removal finds one to remove
    assert second not in controls.widgets and second not in viewer.layers
    third = _insert_quietly(viewer, data, {**kwargs, "name": "third"})
    late_controls(viewer, third)  # the turn of its own
    assert third in controls.widgets
    # a whole study by the plugin's path into an empty viewer: every scan is new, and ends with its panel
    viewer.layers.clear()
    done = []
    show_study_gradually(viewer, [tiny_study()], done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    assert len(viewer.layers) == 2 and all(layer in controls.widgets for layer in viewer.layers)


def test_a_study_closed_on_its_way_in_ends_with_what_is_still_there(make_napari_viewer, qtbot):
    """The reader clears the layers while a study's scans still arrive (a turn each): the arrival ends
    without selecting a layer that is gone, and reports only the layers still in the viewer."""
    viewer = make_napari_viewer(show=True)
    done = []
    show_study_gradually(viewer, [tiny_study()], done.append)
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=30_000)
    viewer.layers.clear()
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    assert all(layer in viewer.layers for layer in done[0]) and len(done[0]) <= 1
    assert viewer.layers.selection.active in (*done[0], None)
