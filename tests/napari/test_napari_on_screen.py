"""One source of truth for the study on screen: regression tests for each way the widgets used to show
another study's results or act on its layers, and a model-based test (hypothesis) that drives a real viewer
through random reading sequences and checks the invariants after every step."""
from __future__ import annotations

import contextlib
import itertools
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from napari_helpers import STUDY_UID, axial_scan, head_volume, sagittal_of, use_model, write_two_plane_study
from pacs_server import PASSWORD, USER, Orthanc, dicom_files
from permissions import as_another_user, lock, remove, world_traversable_dir

from hlip_engine.io import write_dicom_series
from hlip_napari._launch import dock_widgets
from hlip_napari._layers import KIND_KEY, study_label, study_of
from hlip_napari._on_screen import on_screen
from hlip_napari._reading import reading
from hlip_napari._view import scan_layers

MR_UID = "1.2.826.0.1.3680043.8.498.74021000000000000000088"
CT2_UID = "1.2.826.0.1.3680043.8.498.74021000000000000000099"


def write_mr_study(folder, uid=MR_UID, slices=18):
    """A 2-series MR study (axial + sagittal) on disk, on another grid than the CT's."""
    rng = np.random.default_rng(7)
    vol = rng.normal(300, 40, (slices, 32, 28)).astype(np.float32)
    vol[slices // 2, 10:14, 8:12] = 900
    ax = axial_scan(vol, spacing=(4.0, 1.5, 1.5), origin=(-40.0, -30.0, -20.0), modality="MR",
                    description="T1 AX")
    sag = sagittal_of(ax, modality="MR", description="T2 SAG")
    write_dicom_series(ax, folder / "ax", study_uid=uid, series_number=1, study_description="MR BRAIN",
                       study_date="20240105")
    write_dicom_series(sag, folder / "sag", study_uid=uid, series_number=2, study_description="MR BRAIN",
                       study_date="20240105")
    return folder


def write_ct_study(folder, uid=CT2_UID):
    vol = head_volume((20, 36, 30), seed=4)
    ax = axial_scan(vol, spacing=(5.0, 0.9, 0.9), origin=(-50.0, -10.0, 0.0), modality="CT",
                    description="HEAD AX 5mm")
    write_dicom_series(ax, folder / "ax", study_uid=uid, series_number=2, study_description="CT HEAD",
                       study_date="20240107")
    return folder


def write_bad_folders(root, private):
    """Folders a reader meets that hold no readable study: empty, non-DICOM, truncated DICOM files, and (under
    ``private``, a folder others may enter) DICOM files the reader has no permission to read, a study folder
    it may not list."""
    empty = root / "empty"
    empty.mkdir(parents=True)
    other = root / "notes"
    other.mkdir()
    (other / "report.txt").write_text("not an image")
    (other / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    good = write_ct_study(root / "tmp_for_truncation", uid="1.2.826.0.1.3680043.8.498.7402100000000000000077")
    truncated = root / "truncated"
    truncated.mkdir()
    for i, f in enumerate(sorted((good / "ax").iterdir())):
        (truncated / f"IM{i:04d}.dcm").write_bytes(f.read_bytes()[:400])  # header cut, no pixels
    unreadable = private / "no_read_rights"
    locked = private / "no_list_rights"
    for folder in (unreadable, locked):
        (folder / "ax").mkdir(parents=True)
        for f in sorted((good / "ax").iterdir()):
            (folder / "ax" / f.name).write_bytes(f.read_bytes())
            if folder is unreadable:
                lock(folder / "ax" / f.name)
    lock(locked)
    return {"empty": empty, "non-DICOM": other, "truncated": truncated, "unreadable files": unreadable,
            "locked folder": locked}


PERMISSIONS = ("unreadable files", "locked folder")  # opened as a user without rights to them


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("on_screen")
    private = world_traversable_dir()
    ct, _marker, _ax = write_two_plane_study(root / "ct_head")
    try:
        yield {"ct": ct, "mr": write_mr_study(root / "mr_brain"), "ct2": write_ct_study(root / "ct_head_2"),
               **write_bad_folders(root / "bad", private)}
    finally:
        remove(private)


UIDS = {"ct": STUDY_UID, "mr": MR_UID, "ct2": CT2_UID}


@pytest.fixture(scope="module")
def pacs_with_the_studies(folders, tmp_path_factory):
    """A real Orthanc (DIMSE + DICOMweb) holding the three good studies, for the PACS-retrieve route."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        for name in UIDS:
            server.upload(dicom_files(folders[name]))
        yield server
    finally:
        server.stop()


def file_open_reader(path) -> str:
    """The reader napari's File > Open uses for ``path``: the preferred one (this plugin, for folders)."""
    from napari.plugins.utils import get_preferred_reader

    from hlip_napari._reader import prefer_for_studies

    prefer_for_studies()  # as the plugin's activation does
    reader = get_preferred_reader(str(path))
    assert reader == "hlip-napari", f"File > Open would ask which reader to use for {path} ({reader})"
    return reader


def _settle(qtbot, ms: int = 30) -> None:
    qtbot.wait(ms)


def _wait_jobs(qtbot, *widgets, timeout=60_000) -> None:
    qtbot.waitUntil(lambda: not any(w.job.running for w in widgets), timeout=timeout)
    _settle(qtbot)


def _plane_ok(hanging, study) -> bool:
    """Every layer on each 3-up plane is the study on screen's, and its slider lies inside that study."""
    for canvas in hanging.canvases.values():
        model = canvas.model
        for layer in model.layers:
            if study_of(layer) is not study:
                return False
        images = [x for x in model.layers if x.metadata.get(KIND_KEY) == "scan"]
        if study is None:
            if images:
                return False
            continue
        if not images:
            return False
        axis = int(model.dims.order[0])
        lo, hi = np.asarray(images[0].extent.world, dtype=float)[:, axis]
        if not lo - 1e-3 <= float(model.dims.point[axis]) <= hi + 1e-3:
            return False
    return True


# --- regressions ---------------------------------------------------------------------------------------
def test_3up_docked_then_viewer_open_hangs_the_new_study_and_the_next_open_raises_nothing(
        folders, make_napari_viewer, qtbot):
    """3-up docked, a study opened by the browser (a search hit's path), then ``viewer.open`` of two more
    studies: the planes show the study on screen (its slices, crosshair inside it), and nothing raises."""
    viewer = make_napari_viewer(show=True)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    browser.open_path(str(folders["mr"]))
    qtbot.waitUntil(lambda: on_screen(viewer).study is not None, timeout=30_000)
    hanging = browser.hang_3up()
    for name in ("ct", "ct2"):
        viewer.open(str(folders[name]), plugin="hlip-napari")
        _settle(qtbot)
        study = on_screen(viewer).study
        assert study is not None and str(folders[name]) in study.source
        assert _plane_ok(hanging, study)
        cross = [x for x in viewer.layers if x.metadata.get(KIND_KEY) == "crosshair"]
        assert len(cross) <= 1 and all(study_of(x) is study for x in cross)
        lo = np.min([np.asarray(x.extent.world)[0] for x in scan_layers(viewer, study)], axis=0)
        hi = np.max([np.asarray(x.extent.world)[1] for x in scan_layers(viewer, study)], axis=0)
        assert np.all(hanging.point >= lo - 1e-3) and np.all(hanging.point <= hi + 1e-3)
    hanging.close_canvases()


def test_the_relevance_widget_forgets_a_study_that_left_the_screen(folders, tiny_checkpoint,
                                                                   make_napari_viewer, qtbot):
    """Relevance on the MR, then a CT opened: the peak button is off, the chart empty, the status names
    the CT, and "Go to the most relevant slice" does nothing (it raised KeyError 'hlip_scan' before)."""
    use_model(tiny_checkpoint)
    viewer = make_napari_viewer()
    rw = dock_widgets(viewer, ("Relevance map",))["Relevance map"]
    viewer.open(str(folders["mr"]), plugin="hlip-napari")
    rw.prompt.setText("glioma")
    rw.run()
    _wait_jobs(qtbot, rw)
    assert rw.result is not None and rw.jump_button.isEnabled()
    viewer.open(str(folders["ct"]), plugin="hlip-napari")
    ct = on_screen(viewer).study
    assert not rw.jump_button.isEnabled() and rw.result is None and rw.chart.values == []
    assert study_label(ct) in rw.status.text()
    point = tuple(viewer.dims.point)
    rw.go_to_peak()
    assert tuple(viewer.dims.point) == point
    assert not scan_layers(viewer, kind="relevance")  # the MR's overlays left with it


def test_a_result_for_a_study_no_longer_on_screen_is_dropped(folders, tiny_checkpoint, make_napari_viewer,
                                                             qtbot):
    """Zero-shot and relevance started on one study, another opened before they finish: nothing of theirs
    reaches the screen or the widgets."""
    use_model(tiny_checkpoint)
    viewer = make_napari_viewer()
    docks = dock_widgets(viewer, ("Zero-shot prompts", "Relevance map"))
    zw, rw = docks["Zero-shot prompts"], docks["Relevance map"]
    viewer.open(str(folders["mr"]), plugin="hlip-napari")
    rw.prompt.setText("glioma")
    rw.run()
    zw.run()
    viewer.open(str(folders["ct"]), plugin="hlip-napari")  # while both run (or before their results land)
    _wait_jobs(qtbot, rw, zw)
    qtbot.wait(200)
    assert rw.result is None and zw.results == {} and zw.table.rowCount() == 0
    assert not scan_layers(viewer, kind="relevance")


WHY = {"empty": "no study here", "non-DICOM": "no study here", "truncated": "header cut short",
       "unreadable files": "no permission to read it", "locked folder": "no permission to"}


@pytest.mark.parametrize("bad", ["empty", "non-DICOM", "truncated", *PERMISSIONS])
def test_a_folder_that_cannot_be_read_leaves_the_study_on_screen(bad, folders, make_napari_viewer, qtbot):
    """By ``viewer.open`` (File > Open's reader) and by the Study browser: the study on screen stays, the
    browser says why in words, and napari's reader chooser never shows (no exception reaches napari). The
    permission cases are opened as a user without rights to those files (tests/permissions.py)."""
    viewer = make_napari_viewer()
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    viewer.open(str(folders["ct"]), plugin="hlip-napari")
    study, layers = on_screen(viewer).study, list(viewer.layers)
    reader = file_open_reader(folders[bad])
    with as_another_user() if bad in PERMISSIONS else contextlib.nullcontext():
        viewer.open(str(folders[bad]), plugin=reader)
        assert on_screen(viewer).study is study and list(viewer.layers) == layers
        assert str(folders[bad]) in browser.title.text() and WHY[bad] in browser.title.text()
        browser.open_path(str(folders[bad]))
        qtbot.waitUntil(lambda: not browser.job.running, timeout=30_000)
        _settle(qtbot)
    assert on_screen(viewer).study is study and list(viewer.layers) == layers
    assert str(folders[bad]) in browser.title.text() and browser.table.rowCount() == len(study.scans)
    assert WHY[bad] in browser.title.text(), browser.title.text()


def test_the_next_study_opens_mid_study_not_where_the_last_one_was(folders, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open(str(folders["mr"]), plugin="hlip-napari")
    reading(viewer).step(-100)  # to the first image
    viewer.open(str(folders["ct"]), plugin="hlip-napari")
    study = on_screen(viewer).study
    layer = scan_layers(viewer, study)[0]
    lo, hi = np.asarray(layer.extent.world, dtype=float)
    assert np.allclose(np.asarray(viewer.dims.point)[0], (lo[0] + hi[0]) / 2, atol=abs(hi[0] - lo[0]) / 10 + 3)
    assert study_label(study) in str(viewer.status)  # the status bar names the study on screen, not the MR
    # the shown (first) scan is napari's active layer and tops its layer list, the others below in series order
    assert viewer.layers.selection.active is layer and layer.visible
    assert list(viewer.layers)[::-1] == scan_layers(viewer, study)


def test_no_warm_up_thread_and_no_process_wide_switch(make_napari_viewer):
    """The plugin starts no thread of its own at start-up and leaves gc, the thread switch interval and the
    warnings filters as it found them."""
    import gc
    import sys
    import warnings

    filters, interval, frozen = list(warnings.filters), sys.getswitchinterval(), gc.get_freeze_count()
    viewer = make_napari_viewer()
    dock_widgets(viewer)
    viewer.open(str(write_ct_study(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))),
                plugin="hlip-napari")
    assert not [t.name for t in threading.enumerate() if t.name.startswith("hlip-")]
    assert warnings.filters == filters and sys.getswitchinterval() == interval
    assert gc.get_freeze_count() == frozen


def test_overlay_names_start_with_the_prompt():
    from napari_helpers import tiny_study

    from hlip_napari._layers import relevance_layer_data, scan_layer_data

    study = tiny_study()
    _d, kw, _k = relevance_layer_data(study, 0, np.zeros(study.scans[0].shape, np.float32), "acute infarct")
    assert kw["name"].startswith("acute infarct (relevance)")
    assert not scan_layer_data(study, 0)[1]["name"].startswith("acute infarct")


# --- the model-based test ------------------------------------------------------------------------------
SEQUENCES = int(os.environ.get("HLIP_READING_SEQUENCES", "40"))  # CI: 40 sequences of 15 steps
STEPS = 15


def test_random_reading_sequences_keep_every_widget_on_the_study_on_screen(folders, pacs_with_the_studies,
                                                                           tiny_checkpoint, make_napari_viewer,
                                                                           qtbot, monkeypatch):
    """A reader's random sequences (open by five routes, a PACS retrieve among them; bad folders, unreadable
    ones among them; 3-up, compare, zero-shot, relevance, peak, cancel, scroll, window): after every step every visible layer is the study on screen's (the
    labelled compare canvas aside), every widget names that study or is empty, each 3-up plane shows a
    slice inside it, the peak button is off or lands on it, a failed open keeps the study and says why, and
    no exception reaches napari. Hypothesis prints the failing sequence and its seed."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    use_model(tiny_checkpoint)
    monkeypatch.setenv("HLIP_PACS_USERNAME", USER)
    monkeypatch.setenv("HLIP_PACS_PASSWORD", PASSWORD)
    viewer = make_napari_viewer(show=True)
    docks = dock_widgets(viewer, ("Study browser", "Zero-shot prompts", "Relevance map", "PACS"))
    browser, zw, rw, pacs = (docks[k] for k in ("Study browser", "Zero-shot prompts", "Relevance map", "PACS"))
    pacs.node.setCurrentText(pacs_with_the_studies.dimse_url)
    pacs.search()
    qtbot.waitUntil(lambda: {r["study_uid"] for r in pacs.rows} >= set(UIDS.values()), timeout=30_000)
    screen = on_screen(viewer)
    errors: list[str] = []

    def noted(n):
        if isinstance(n, ErrorNotification):  # an exception that reached napari's error reporter
            errors.append(str(n.message))

    notification_manager.notification_ready.connect(noted)
    good = ("ct", "mr", "ct2")
    routes = ("viewer.open", "file-open", "browser", "search-hit", "pacs")
    bad_folders = ("empty", "non-DICOM", "truncated", *PERMISSIONS)
    tally: dict[str, int] = {}  # how often each route and each bad folder was taken
    turns = itertools.count()

    class Reader(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.hanging = None
            self.expect_failure = None

        @initialize()
        def first_steps(self):
            """Each sequence starts by opening a study by the next route in turn, then a bad folder of the next
            kind in turn: every route and every kind is taken whatever hypothesis draws after that."""
            i = next(turns)
            self.open_study(good[i % len(good)], routes[i % len(routes)])
            self.open_bad_folder(bad_folders[i % len(bad_folders)], ("viewer.open", "browser")[i // 5 % 2])

        # --- opening ---------------------------------------------------------------------------------
        @rule(name=st.sampled_from(good), route=st.sampled_from(routes))
        def open_study(self, name, route):
            tally[route] = tally.get(route, 0) + 1
            path = str(folders[name])
            if route == "pacs":  # retrieved from the PACS into the cache, then opened by the Study browser
                pacs.retrieve([r["study_uid"] for r in pacs.rows].index(UIDS[name]))
                qtbot.waitUntil(lambda: not pacs.retrieve_job.running, timeout=60_000)
                qtbot.waitUntil(lambda: not browser.job.running, timeout=30_000)
                path = pacs.opened_path
                assert path, pacs.status.text()
            elif route == "viewer.open":
                viewer.open(path, plugin="hlip-napari")
            elif route == "file-open":
                viewer.open(path, plugin=file_open_reader(path))
            elif route == "browser":
                browser.open_path(path)
                qtbot.waitUntil(lambda: not browser.job.running, timeout=30_000)
            else:  # a search hit: the search widget's route (load, then show)
                from hlip_napari._reader import load_studies

                docks_search = dock_widgets(viewer, ("Search studies",))["Search studies"]
                docks_search._opened(load_studies(path), path)
            _settle(qtbot)
            if browser.compare.isChecked() and screen.prior is not None and route in ("browser", "pacs"):
                # compare mode: the browser opened it beside the study on screen, and says whose header it shows
                assert path in screen.prior.source and "Opening" not in browser.title.text()
                self.expect_failure = None
                return
            assert screen.study is not None and path in screen.study.source
            self.expect_failure = None

        @rule(name=st.sampled_from(bad_folders), route=st.sampled_from(["viewer.open", "browser"]))
        def open_bad_folder(self, name, route):
            tally[name] = tally.get(name, 0) + 1
            before, path = screen.study, str(folders[name])
            if name in PERMISSIONS:
                _wait_jobs(qtbot, rw, zw)  # only the open runs without rights (the model's files stay readable)
            reader = file_open_reader(path)
            with as_another_user() if name in PERMISSIONS else contextlib.nullcontext():
                if route == "viewer.open":
                    viewer.open(path, plugin=reader)
                else:
                    browser.open_path(path)
                    qtbot.waitUntil(lambda: not browser.job.running, timeout=30_000)
                _settle(qtbot)
            assert screen.study is before
            self.expect_failure = path

        # --- hanging and compare -------------------------------------------------------------------
        @rule()
        def toggle_3up(self):
            if self.hanging is None:
                self.hanging = browser.hang_3up()
            else:
                self.hanging.close_canvases()
                dock = browser._hanging[0]
                viewer.window.remove_dock_widget(dock)
                browser._hanging = None
                self.hanging = None
            _settle(qtbot)

        @rule()
        def toggle_compare(self):
            browser.compare.setChecked(not browser.compare.isChecked())
            _settle(qtbot)

        # --- the model -------------------------------------------------------------------------------
        @rule(wait=st.booleans())
        def zero_shot(self, wait):
            zw.run()
            if wait:
                _wait_jobs(qtbot, zw)

        @rule(prompt=st.sampled_from(["glioma", "haemorrhage"]), wait=st.booleans())
        def relevance(self, prompt, wait):
            rw.prompt.setText(prompt)
            rw.run()
            if wait:
                _wait_jobs(qtbot, rw)

        @rule()
        def go_to_peak(self):
            rw.go_to_peak()
            _settle(qtbot)

        @rule()
        def cancel(self):
            rw.job.cancel()
            zw.job.cancel()
            _settle(qtbot)

        @precondition(lambda self: screen.study is not None)
        @rule(n=st.integers(-5, 5), width=st.floats(20, 2000), level=st.floats(-200, 400))
        def scroll_and_window(self, n, width, level):
            reading(viewer).step(n)
            layer = next((x for x in scan_layers(viewer, screen.study) if x.visible), None)
            if layer is not None:
                reading(viewer).set_window(layer, width, level)
            _settle(qtbot)

        # --- invariants -----------------------------------------------------------------------------
        @invariant()
        def one_study_on_screen(self):
            study = screen.study
            for layer in viewer.layers:
                if layer.visible and study_of(layer) is not None:
                    assert study_of(layer) is study, f"{layer.name} is not the study on screen's"

        @invariant()
        def widgets_name_the_study_on_screen(self):
            if screen.switching:
                return
            study = screen.study
            assert browser.study is study
            assert rw.study is None or rw.study is study
            assert zw._study is None or zw._study is study
            assert not rw.jump_button.isEnabled() or (rw.study is study and rw.result is not None)
            if study is None:
                assert browser.table.rowCount() == 0
            else:
                assert browser.table.rowCount() == len(scan_layers(viewer, study))

        @invariant()
        def the_3up_shows_the_study_on_screen(self):
            if self.hanging is not None:
                qtbot.waitUntil(lambda: not self.hanging._timer.isActive(), timeout=5_000)
                assert _plane_ok(self.hanging, screen.study)

        @invariant()
        def a_failed_open_says_why(self):
            if self.expect_failure is not None:
                assert self.expect_failure in browser.title.text()

        @invariant()
        def nothing_reached_napari_as_an_exception(self):
            assert not errors, errors

        def teardown(self):
            for w in (rw, zw):
                w.job.cancel()
            _wait_jobs(qtbot, rw, zw)
            if self.hanging is not None:
                self.hanging.close_canvases()
                viewer.window.remove_dock_widget(browser._hanging[0])
                browser._hanging = None
            browser.compare.setChecked(False)

    try:
        run_state_machine_as_test(Reader, settings=settings(
            max_examples=SEQUENCES, stateful_step_count=STEPS, deadline=None, print_blob=True,
            suppress_health_check=list(HealthCheck)))
    finally:
        notification_manager.notification_ready.disconnect(noted)
        print(f"\nreading sequences: {SEQUENCES} x {STEPS} steps; opened by route / bad folder: {tally}")
        compare = getattr(browser, "_compare", None)
        if compare is not None:  # the compare canvas is napari's QtViewer too: closed before the viewer
            compare.close_canvases()
    if SEQUENCES >= len(routes):  # the first steps took every route and every kind of bad folder
        assert set(routes) | set(bad_folders) <= set(tally), tally


def test_an_empty_viewer_says_how_to_open_a_study(folders, make_napari_viewer):
    """With the plugin docked and nothing open, the corner says how to open a study and the edges show the
    axial hanging a study opens in; a study replaces that; closing it brings the hint back; a viewer holding
    someone else's image gets no plugin text over it. The bottom-left legend (the PACS mouse, the CT windows)
    shows only while no study is open; the scale bar only while one is."""
    from hlip_engine.windows import window_presets
    from hlip_napari._reading import LEGEND_LINE, NO_STUDY_TEXT, legend_text

    viewer = make_napari_viewer()
    dock_widgets(viewer, ("Study browser",))
    overlays = viewer.canvas.overlays
    assert overlays["hlip_info"].text == NO_STUDY_TEXT and overlays["hlip_legend"].text == legend_text()
    brain, lung = window_presets()["Brain"], window_presets()["Lung"]
    assert "wheel = next image" in legend_text() and f"Brain {brain['width']:.0f}/{brain['level']:.0f}" in \
        legend_text() and f"Lung {lung['width']:.0f}/{lung['level']:.0f}" in legend_text()
    # short lines: clear of the letters "A" and "P" at the top and bottom centre of a narrow canvas
    assert max(len(line) for line in (legend_text() + "\n" + NO_STUDY_TEXT).splitlines()) <= LEGEND_LINE
    assert (overlays["hlip_top"].text, overlays["hlip_left"].text) == ("A", "R")
    viewer.open(str(folders["ct"]), plugin="hlip-napari")
    assert overlays["hlip_info"].text.startswith(study_label(on_screen(viewer).study))
    assert overlays["hlip_legend"].text == "" and overlays["scale_bar"].visible
    viewer.layers.clear()
    assert on_screen(viewer).study is None and overlays["hlip_info"].text == NO_STUDY_TEXT
    assert overlays["hlip_legend"].text == legend_text() and not overlays["scale_bar"].visible
    viewer.add_image(np.zeros((4, 4), np.float32), name="someone else's")
    assert overlays["hlip_info"].text == "" and overlays["hlip_top"].text == ""
    assert overlays["hlip_legend"].text == "" and not overlays["scale_bar"].visible


@pytest.mark.parametrize("route", ["viewer.open", "show_study"])
def test_the_corner_never_names_the_closed_study_over_the_next_one(route, folders, make_napari_viewer):
    """While the next study's layers come in (napari paints then: a new slider, the layer controls), the
    corner texts are blank, never the closed study's patient over the new images; once it is on screen they
    name it."""
    from hlip_napari._show import show_study

    viewer = make_napari_viewer()
    dock_widgets(viewer, ("Study browser",))
    viewer.open(str(folders["mr"]), plugin="hlip-napari")
    closed = on_screen(viewer).study
    info = viewer.canvas.overlays["hlip_info"]
    seen = []

    def inserted(event):  # a layer of the next study is in, before that study is on screen
        if study_of(event.value) not in (closed, on_screen(viewer).study):
            seen.append((info.text, viewer.canvas.overlays["scale_bar"].visible))

    viewer.layers.events.inserted.connect(inserted)
    info.events.text.connect(lambda e: seen.append((info.text, None)) if on_screen(viewer).switching else None)
    if route == "viewer.open":
        viewer.open(str(folders["ct"]), plugin="hlip-napari")
    else:
        from hlip_engine import load_study

        show_study(viewer, [load_study(str(folders["ct"]))])
    assert seen  # a scan came in before the switch ended
    assert all(text == "" for text, _bar in seen), seen
    assert all(bar is not True for _text, bar in seen), seen
    assert info.text.startswith(study_label(on_screen(viewer).study)) and "CT" in info.text
    assert viewer.canvas.overlays["scale_bar"].visible


def test_a_study_opened_beside_for_comparison_leaves_the_browser_naming_the_study_on_screen(
        folders, make_napari_viewer, qtbot):
    """Found by the model-based test: a prior opened in compare mode left the browser saying "Opening …"."""
    viewer = make_napari_viewer()
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    viewer.open(str(folders["mr"]), plugin="hlip-napari")
    study = on_screen(viewer).study
    browser.compare.setChecked(True)
    browser.open_path(str(folders["ct"]))
    qtbot.waitUntil(lambda: on_screen(viewer).prior is not None, timeout=30_000)
    assert on_screen(viewer).study is study and str(folders["ct"]) in on_screen(viewer).prior.source
    assert "Opening" not in browser.title.text() and study.description in browser.title.text()
    browser.compare.setChecked(False)
    assert on_screen(viewer).prior is None
    browser._compare.close_canvases()
