"""Reading like a radiologist: one patient on screen, the PACS mouse (real Qt wheel and drag events), the
canvas texts, loader warnings on the scan's row, the ruler in mm."""
from __future__ import annotations

import numpy as np
from napari_helpers import assert_not_blank, canvas_widget, tiny_study, write_two_plane_study
from qtpy.QtCore import QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent, QWheelEvent
from qtpy.QtWidgets import QApplication

from hlip_engine.io import load_study, write_dicom_series
from hlip_engine.study import Study
from hlip_napari._launch import dock_widgets, save_screenshot
from hlip_napari._layers import study_label
from hlip_napari._qt.study_browser import COLUMNS
from hlip_napari._reading import edge_letters, reading, slice_of
from hlip_napari._show import show_study as add_studies
from hlip_napari._view import add_ruler, camera, scan_layers, show_plane


def _mr_study_folder(root):
    mr = tiny_study()
    for scan in mr.scans:
        write_dicom_series(scan, root / f"s{scan.series_number}", study_uid="1.2.826.0.1.3680043.8.498.5",
                           series_number=scan.series_number, study_description="MR BRAIN", study_date="20240104")
    return root


def _canvas(viewer):
    return canvas_widget(viewer)


def wheel(viewer, notches: int = 1, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    """A real Qt wheel event in the middle of the canvas (120 = one notch, positive = away from the user)."""
    native = _canvas(viewer)
    c = QPointF(native.width() / 2, native.height() / 2)
    ev = QWheelEvent(c, native.mapToGlobal(c), QPoint(0, 0), QPoint(0, 120 * notches), Qt.MouseButton.NoButton,
                     modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(native, ev)
    QApplication.processEvents()


def drag(viewer, dx: int, dy: int, button=Qt.MouseButton.LeftButton) -> None:
    """A real press-move-release on the canvas."""
    native = _canvas(viewer)
    start = QPointF(native.width() / 2, native.height() / 2)
    events = [(QMouseEvent.Type.MouseButtonPress, start, button)]
    for k in range(1, 5):
        events.append((QMouseEvent.Type.MouseMove, start + QPointF(dx * k / 4, dy * k / 4), button))
    events.append((QMouseEvent.Type.MouseButtonRelease, start + QPointF(dx, dy), Qt.MouseButton.NoButton))
    for kind, pos, buttons in events:
        ev = QMouseEvent(kind, pos, native.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(native, ev)
        QApplication.processEvents()


def test_a_second_study_replaces_the_first_and_every_layer_says_whose(tmp_path, make_napari_viewer, qtbot,
                                                                      screenshot_dir):
    ct_folder, _m, _a = write_two_plane_study(tmp_path / "ct")
    mr_folder = _mr_study_folder(tmp_path / "mr")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    browser.open_path(str(ct_folder))
    qtbot.waitUntil(lambda: len(scan_layers(viewer)) == 2 and browser.study is not None, timeout=60_000)
    ct = browser.study
    add_ruler(viewer, ct).add_lines(np.array([[0.0, 0.0, 0.0], [0.0, 30.0, 40.0]]))
    assert viewer.layers[-1].features["length"].tolist() == [50.0]  # mm: the world is in mm
    browser.open_path(str(mr_folder))
    qtbot.waitUntil(lambda: browser.study is not None and browser.study.modality == "MR"
                    and len(scan_layers(viewer, browser.study)) == len(browser.study.scans), timeout=60_000)
    mr = browser.study
    assert {layer.metadata["study_uid"] for layer in viewer.layers} == {mr.uid}  # the CT (and its ruler) closed
    for layer in viewer.layers:
        assert layer.name.startswith(study_label(mr) + " · "), layer.name
        assert layer.metadata["series_uid"] in {s.series_uid for s in mr.scans}
        assert [str(u) for u in layer.units] == ["millimeter"] * 3
    assert viewer.canvas.overlays["scale_bar"].visible
    extent = np.asarray(viewer.layers.extent.world)[:, -3:]  # Reset view frames this study only
    mr_extent = np.asarray([np.min([x.extent.world[0] for x in viewer.layers], axis=0),
                            np.max([x.extent.world[1] for x in viewer.layers], axis=0)])
    np.testing.assert_allclose(extent, mr_extent[:, -3:])

    # compare mode: the CT opens beside the MR, in its own labelled canvas; the MR stays on screen
    browser.compare.setChecked(True)
    browser.open_path(str(ct_folder))
    qtbot.waitUntil(lambda: getattr(browser, "_compare", None) is not None
                    and len(browser._compare.canvas.model.layers) == 2, timeout=60_000)
    compare = browser._compare
    assert {layer.metadata["study_uid"] for layer in viewer.layers} == {mr.uid}
    assert {layer.metadata["study_uid"] for layer in compare.canvas.model.layers} == {ct.uid}
    assert "2024-01-02 CT" in compare.canvas.title.text()
    QApplication.processEvents()
    assert compare.canvas.model.canvas.overlays["hlip_info"].text.startswith("2024-01-02 CT")
    assert viewer.canvas.overlays["hlip_info"].text.startswith("2024-01-04 MR")
    save_screenshot(viewer, screenshot_dir / "compare_two_studies.png")
    compare.close_canvases()
    browser.compare.setChecked(False)

    # File ▸ Open through our reader closes the MR study the same way
    viewer.open(str(ct_folder), plugin="hlip-napari")
    qtbot.waitUntil(lambda: {layer.metadata["study_uid"] for layer in viewer.layers} == {ct.uid}, timeout=60_000)
    assert len(viewer.layers) == 2
    QApplication.processEvents()
    save_screenshot(viewer, screenshot_dir / "one_study_on_screen.png")
    qtbot.wait(50)


def test_pacs_mouse_wheel_steps_slices_ctrl_wheel_zooms_drag_windows(make_napari_viewer, qtbot, screenshot_dir):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    study = tiny_study()  # axial T1 of 12 slices at 4 mm
    browser.add_studies([study])
    ax = scan_layers(viewer, study)[0]
    state = reading(viewer)
    assert state.pacs and browser.pacs_mouse.isChecked()
    assert [browser.window.itemText(i) for i in range(browser.window.count())] == ["MR auto (0.5-99.5 %)"]
    QApplication.processEvents()
    first, n, pos, axis = slice_of(viewer, ax)
    assert n == 12 and axis == 0
    zoom = camera(viewer).zoom
    wheel(viewer, -1)  # towards the user: the next image
    assert slice_of(viewer, ax)[0] == first + 1
    assert slice_of(viewer, ax)[2] == pos + 4.0  # one slice of this scan: 4 mm
    assert camera(viewer).zoom == zoom  # the wheel no longer zooms
    assert viewer.canvas.overlays["hlip_info"].text.count(f"Im {first + 1}/12") == 1
    wheel(viewer, 1)
    wheel(viewer, 1)
    assert slice_of(viewer, ax)[0] == first - 1
    wheel(viewer, 1, Qt.KeyboardModifier.ControlModifier)
    assert camera(viewer).zoom > zoom and slice_of(viewer, ax)[0] == first - 1

    lo, hi = ax.contrast_limits
    drag(viewer, 100, 0)  # to the right: a wider window, same level
    lo2, hi2 = ax.contrast_limits
    assert hi2 - lo2 > (hi - lo) * 1.5 and np.isclose((lo2 + hi2) / 2, (lo + hi) / 2, atol=1e-3)
    w, level = hi2 - lo2, (lo2 + hi2) / 2
    assert f"W {w:.0f}  L {level:.0f}" in viewer.canvas.overlays["hlip_info"].text
    drag(viewer, 0, 50)  # down: the level rises
    assert (sum(ax.contrast_limits) / 2) > level

    # orientation letters follow the plane: axial R/L A/P, sagittal A/P S/I
    assert [viewer.canvas.overlays[f"hlip_{e}"].text for e in ("top", "bottom", "left", "right")] == \
        ["A", "P", "R", "L"]
    show_plane(viewer, "sagittal")
    assert edge_letters(viewer.dims.order, camera(viewer).orientation2d) == \
        {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    assert viewer.canvas.overlays["hlip_top"].text == "S"
    show_plane(viewer, "axial")
    save_screenshot(viewer, screenshot_dir / "pacs_mouse_axial.png")
    from imageio.v3 import imread

    assert_not_blank(imread(screenshot_dir / "pacs_mouse_axial.png"), "PACS axial")

    # switched off: napari's own mouse again (the wheel zooms, the slice stays)
    browser.pacs_mouse.setChecked(False)
    at, zoom = slice_of(viewer, ax)[0], camera(viewer).zoom
    wheel(viewer, 1)
    assert slice_of(viewer, ax)[0] == at and camera(viewer).zoom != zoom


def test_loader_warnings_show_on_the_row_and_in_a_notification(tmp_path, make_napari_viewer, qtbot,
                                                              screenshot_dir):
    from napari.utils.notifications import notification_manager

    folder, _m, _a = write_two_plane_study(tmp_path / "study")
    files = sorted((folder / "ax").iterdir())
    files[len(files) // 2].unlink()  # one missing slice: the loader fills it by interpolation
    messages: list[str] = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    browser.open_path(str(folder))
    qtbot.waitUntil(lambda: browser.table.rowCount() == 2, timeout=60_000)
    row = next(r for r in range(2) if browser.table.item(r, COLUMNS.index("Plane")).text() == "axial")
    text = browser.table.item(row, 2).text()
    assert "⚠" in text and "filled by linear interpolation" in text, text
    other = 1 - row
    assert "⚠" not in browser.table.item(other, 2).text()
    assert "changed by the loader" in browser.title.text()
    assert browser.window.count() > 5 and browser.window.itemText(0).startswith("CT ")  # CT presets for CT
    assert any("filled by linear interpolation" in m and "check before reading" in m for m in messages), messages
    save_screenshot(viewer, screenshot_dir / "loader_warning_row.png")


def _click(native, x: float, y: float) -> None:
    pos = QPointF(x, y)
    for kind, buttons in ((QMouseEvent.Type.MouseButtonPress, Qt.MouseButton.LeftButton),
                          (QMouseEvent.Type.MouseButtonRelease, Qt.MouseButton.NoButton)):
        ev = QMouseEvent(kind, pos, native.mapToGlobal(pos), Qt.MouseButton.LeftButton, buttons,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(native, ev)
        QApplication.processEvents()


def test_3up_hanging_crosshair_moves_the_other_planes_to_the_clicked_point(tmp_path, make_napari_viewer, qtbot,
                                                                           screenshot_dir):
    """Axial CT in the viewer, its acquired sagittal series in the sagittal canvas: a click in one plane puts
    the others on the same patient point, within one voxel of the series each shows."""
    folder, _marker, _ax = write_two_plane_study(tmp_path / "study")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    browser.open_path(str(folder))
    qtbot.waitUntil(lambda: len(scan_layers(viewer)) == 2, timeout=60_000)
    hanging = browser.hang_3up()
    qtbot.waitUntil(lambda: all(c.model.layers for c in hanging.canvases.values()) ,
                    timeout=10_000)
    for _ in range(5):
        QApplication.processEvents()
    sag_canvas, cor_canvas = hanging.canvases["sagittal"], hanging.canvases["coronal"]
    for canvas in (sag_canvas, cor_canvas):  # each plane takes its share of the dock's height
        assert canvas.height() > 300, f"a 3-up plane is {canvas.height()} px tall"
    sag_layer = next(x for x in sag_canvas.model.layers if x.metadata.get("hlip_kind") == "scan")
    assert sag_layer.metadata["orientation"] == "sagittal"  # the acquired sagittal, not a reformat
    assert tuple(sag_canvas.model.dims.order) == (2, 0, 1) and tuple(cor_canvas.model.dims.order) == (1, 0, 2)
    ax_layer = reading(viewer) and next(x for x in scan_layers(viewer) if x.visible)

    # a click off-centre in the axial canvas: the world point under the cursor is where the others go
    native = _canvas(viewer)
    _click(native, native.width() * 0.6, native.height() * 0.4)
    clicked = np.asarray(viewer.cursor.position, dtype=float)
    np.testing.assert_allclose(hanging.point, clicked, atol=1e-6)
    i, _n, pos, axis = slice_of(sag_canvas.model, sag_layer)
    assert axis == 2 and abs(pos - clicked[2]) <= sag_layer.metadata["spacing_mm"][0] / 2 + 1e-6
    _i, _n, pos, axis = slice_of(cor_canvas.model, next(iter(cor_canvas.model.layers)))
    assert axis == 1 and abs(pos - clicked[1]) <= 1.0 / 2 + 1e-6  # rows of the axial series: 1 mm
    assert np.isclose(viewer.dims.point[0], clicked[0])  # the axial plane stays where it was clicked

    # a click in the sagittal canvas moves the axial slice to that height (within one 3 mm axial slice)
    native = sag_canvas.qt_viewer.canvas.native
    _click(native, native.width() * 0.5, native.height() * 0.45)
    cursor = np.asarray(sag_canvas.model.cursor.position, dtype=float)
    point = hanging.point  # the cursor's point, kept inside the study
    assert np.isclose(point[1], cursor[1]) and point[0] <= cursor[0]
    _i, _n, pos, axis = slice_of(viewer, ax_layer)
    assert axis == 0 and abs(pos - point[0]) <= 3.0 / 2 + 1e-6
    assert not np.isclose(point[0], clicked[0])  # it really moved
    # the wheel in the axial plane moves the axial line in the sagittal canvas
    wheel(viewer, 1)  # away from the user: the previous image, 3 mm below the one shown
    assert np.isclose(hanging.point[0], pos - 3.0) and np.isclose(viewer.dims.point[0], pos - 3.0)
    for _ in range(5):
        QApplication.processEvents()
    save_screenshot(viewer, screenshot_dir / "hanging_3up_crosshair.png")

    # a relevance overlay hangs in the planes too, and the next prompt's overlay replaces the copy
    from hlip_napari._layers import relevance_layer_data

    study = browser.study
    k = next(i for i, s in enumerate(study.scans) if s.orientation == "sagittal")
    data, kwargs, _ = relevance_layer_data(study, k, np.zeros(study.scans[k].shape, np.float32), "haemorrhage")
    overlay = viewer.add_image(data, **kwargs)

    def sag_overlay():
        return next((x for x in sag_canvas.model.layers if x.metadata.get("hlip_kind") == "relevance"), None)

    qtbot.waitUntil(lambda: sag_overlay() is not None, timeout=10_000)
    assert float(np.asarray(sag_overlay().data).max()) == 0.0
    data2, kwargs2, _ = relevance_layer_data(study, k, np.ones(study.scans[k].shape, np.float32), "subdural")
    viewer.layers.remove(overlay)
    viewer.add_image(data2, **kwargs2)
    qtbot.waitUntil(lambda: sag_overlay() is not None and float(np.asarray(sag_overlay().data).max()) == 1.0,
                    timeout=10_000)
    assert "subdural" in sag_overlay().name
    hanging.close_canvases()
    qtbot.wait(50)


def test_the_image_number_is_the_series_own_in_its_plane(tmp_path, make_napari_viewer):
    """Im k/n counts the scan's own slices (its images' order) whichever way its array runs in the viewer."""
    from hlip_napari._layers import SCAN_KEY, layer_view

    folder, _marker, _ax = write_two_plane_study(tmp_path / "study")
    study = load_study(folder)
    viewer = make_napari_viewer(show=False)
    add_studies(viewer, [study])
    checked = 0
    for layer in scan_layers(viewer, study):
        scan = study.scans[layer.metadata[SCAN_KEY]]
        show_plane(viewer, scan.orientation)
        axis = int(viewer.dims.order[0])
        view, _ = layer_view(scan)
        assert view.axes[axis] == 0  # the plane shown is the series' own
        for k in (0, scan.shape[0] // 2, scan.shape[0] - 1):
            world = scan.world((k, scan.shape[1] // 2, scan.shape[2] // 2))[::-1]  # (S, P, L)
            viewer.dims.set_point(range(3), tuple(world))
            number, n, _pos, _axis = slice_of(viewer, layer)
            assert (number, n) == (k + 1, scan.shape[0]), (scan.orientation, view, k)
        # the wheel's next image (towards the screen) is the next image number, whichever way the array runs
        for layer_ in scan_layers(viewer, study):
            layer_.visible = layer_ is layer
        middle = scan.world((scan.shape[0] // 2, scan.shape[1] // 2, scan.shape[2] // 2))[::-1]
        viewer.dims.set_point(range(3), tuple(middle))
        before = slice_of(viewer, layer)[0]
        reading(viewer).step(1)
        assert slice_of(viewer, layer)[0] == before + 1, (scan.orientation, view)
        reading(viewer).step(-2)
        assert slice_of(viewer, layer)[0] == before - 1
        checked += int(view.flips[axis])
    assert checked >= 1  # one of the series runs against the viewer's axis: the case that matters


def test_switching_studies_frees_the_old_one(make_napari_viewer, qtbot):
    """Study after study: each closed study is freed, voxels and all (nothing keeps a closed study alive)."""
    import gc
    import weakref

    viewer = make_napari_viewer()
    refs = []
    for i in range(3):
        study = tiny_study()
        study.uid = f"1.2.826.0.1.3680043.8.498.90{i}"
        refs.append(weakref.ref(study))
        add_studies(viewer, [study])
        assert {layer.metadata["study_uid"] for layer in scan_layers(viewer)} == {study.uid}
        del study
    for _ in range(20):  # Qt deletes the closed layers' controls on later event-loop turns
        qtbot.wait(10)
    gc.collect()
    assert refs[0]() is None and refs[1]() is None  # the closed studies are gone, voxels and all
    assert refs[2]() is not None  # the one on screen is not


def _ct_study(uid: str, n_scans: int) -> Study:
    """A CT study on another grid than tiny_study's (other shape, spacing, origin; HU range)."""
    from napari_helpers import axial_scan

    rng = np.random.default_rng(5)
    scans = [axial_scan(rng.integers(-1000, 1500, (9 + k, 30, 28)).astype(np.float32), spacing=(5.0, 0.8, 0.8),
                        modality="CT", description=f"HEAD {k + 1}", series_number=k + 1) for k in range(n_scans)]
    return Study(uid=uid, scans=scans, description="CT HEAD", date="20240109", modality="CT")


def test_the_3up_planes_take_the_next_study_over(make_napari_viewer, qtbot):
    """With the 3-up hung, the next study replaces the planes' copies: they show the new study's voxels and
    grid, nothing of the closed study (its overlay included) is left on a plane, the crosshair moves on with
    the viewer and stays on top, and the closed study is freed."""
    import gc
    import weakref

    from hlip_napari._layers import relevance_layer_data, scan_layer_data
    from hlip_napari._qt.hanging import HangingWidget

    viewer = make_napari_viewer(show=True)
    hanging = HangingWidget(viewer)
    cor = hanging.canvases["coronal"]

    def first_study():  # in a frame of its own: the test's frame holds no reference to it
        first = tiny_study()
        add_studies(viewer, [first])
        data, kwargs, _ = relevance_layer_data(first, 0, np.ones(first.scans[0].shape, np.float32), "glioma")
        viewer.add_image(data, **kwargs)
        qtbot.waitUntil(lambda: sum(x.metadata.get("hlip_kind") == "relevance" for x in cor.model.layers) == 1,
                        timeout=10_000)
        return weakref.ref(first)

    ref = first_study()
    second = _ct_study("1.2.826.0.1.3680043.8.498.79", 2)
    add_studies(viewer, [second])
    shown = cor.model.layers[0]
    assert shown.metadata.get("study_uid") == second.uid
    k = shown.metadata["hlip_scan"]
    fresh, kw, _ = scan_layer_data(second, k)
    assert np.array_equal(np.asarray(shown.data), fresh)
    assert np.allclose(shown.affine.affine_matrix, kw["affine"])
    assert not any(x.metadata.get("hlip_kind") == "relevance" for x in cor.model.layers)
    assert cor.model.layers[-1].metadata.get("hlip_kind") == "crosshair"
    cross = next(x for x in viewer.layers if x.metadata.get("hlip_kind") == "crosshair")
    assert cross.metadata["study_uid"] == second.uid
    assert all(x.metadata.get("study_uid") == second.uid for x in cor.model.layers)
    for _ in range(20):
        qtbot.wait(10)
    gc.collect()
    assert ref() is None  # nothing keeps the closed study alive
    hanging.close_canvases()
    qtbot.wait(50)

def test_the_corner_text_keeps_each_line_short(make_napari_viewer):
    viewer = make_napari_viewer()
    study = _ct_study("1.2.826.0.1.3680043.8.498.79", 1)
    study.description = "MRI BRAIN WITHOUT AND WITH CONTRAST PER PROTOCOL"
    add_studies(viewer, [study])
    info = reading(viewer).texts()["info"].splitlines()
    assert info[0] == study_label(study) and info[1].startswith("MRI BRAIN WITHOUT") and info[1].endswith("…")
    assert all(len(line) <= 30 for line in info)


def test_a_narrow_canvas_gets_smaller_shorter_corner_texts(make_napari_viewer):
    viewer = make_napari_viewer()
    study = _ct_study("1.2.826.0.1.3680043.8.498.80", 1)
    study.description = "MRI BRAIN WITHOUT AND WITH CONTRAST PER PROTOCOL"
    add_studies(viewer, [study])
    state = reading(viewer)
    viewer.canvas.size = (600, 900)
    wide = state.texts()["info"].splitlines()
    assert not state.narrow() and state.line_limit() == 30 and viewer.canvas.overlays["hlip_info"].font_size == 10
    viewer.canvas.size = (600, 300)  # as a sagittal view beside a wide dock: ~300 px
    narrow = state.texts()["info"].splitlines()
    assert state.narrow() and viewer.canvas.overlays["hlip_info"].font_size == 8
    assert state.line_limit() < 30 and all(len(line) <= state.line_limit() for line in narrow[1:])
    assert len(narrow[1]) < len(wide[1]) and narrow[1].endswith("…")
