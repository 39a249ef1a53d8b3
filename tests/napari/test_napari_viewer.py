"""A real viewer: the plugin's widgets docked through npe2, the study browser, screenshots, open time."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from napari_helpers import assert_not_blank, write_big_study, write_two_plane_study
from qtpy.QtCore import Qt

from hlip_napari._launch import OPTIONAL_WIDGETS, WIDGETS, dock_widgets, launch, save_screenshot
from hlip_napari._layers import window_limits
from hlip_napari._view import camera, scan_layers


def test_npe2_manifest_is_discovered_and_valid():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    manifest = pm.get_manifest("hlip-napari")
    assert {w.display_name for w in manifest.contributions.widgets} == set(WIDGETS) | set(OPTIONAL_WIDGETS)
    assert manifest.contributions.readers[0].accepts_directories
    assert manifest.contributions.sample_data
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "npe2"), "validate", "hlip-napari"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_study_browser_docks_lists_scans_and_screenshot(tmp_path, make_napari_viewer, qtbot, screenshot_dir):
    folder, _marker, _ax = write_two_plane_study(tmp_path / "study")
    (folder / "ax" / "README.txt").write_text("not DICOM")  # a stray file: skipped, with its reason
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    launch(study=str(folder), viewer=viewer)
    browser = viewer.window.dock_widgets["Study browser (hlip-napari)"]
    # the table is filled once the study's scans are all in (not per layer: each refresh is a repaint)
    qtbot.waitUntil(lambda: len(viewer.layers) == 2 and browser.table.rowCount() == 2, timeout=60_000)
    cells = [[browser.table.item(r, c).text() for c in range(1, 6)] for r in range(2)]
    assert cells[0] == ["2", "HEAD AX 3mm", "CT", "24×40×36\n3×1×1.2", "axial"]
    assert cells[1][0] == "3" and cells[1][-1] == "sagittal"
    assert browser.skipped.rowCount() >= 1
    assert any("README.txt" in browser.skipped.item(r, 0).text() for r in range(browser.skipped.rowCount()))
    assert not browser.table.item(0, 0).icon().isNull()  # a thumbnail per scan

    # show/hide from the table, double-click = this scan only
    ax_layer, sag_layer = scan_layers(viewer)
    browser.table.item(1, 0).setCheckState(Qt.CheckState.Checked)
    assert sag_layer.visible
    browser._show_only(1)
    assert not ax_layer.visible and sag_layer.visible
    assert browser.table.item(0, 0).checkState() == Qt.CheckState.Unchecked
    # window presets on the chosen scans
    browser.table.selectRow(1)
    browser.apply_window("Subdural")
    assert tuple(sag_layer.contrast_limits) == window_limits("Subdural") == (-25.0, 175.0)
    browser.apply_window("MR auto (0.5-99.5 %)")
    lo, hi = sag_layer.contrast_limits
    assert np.isclose(lo, np.percentile(sag_layer.data, 0.5), atol=5)

    browser._show_only(0)
    browser.apply_window("Brain", [ax_layer])
    path = screenshot_dir / "study_browser.png"
    save_screenshot(viewer, path)
    from imageio.v3 import imread

    image = imread(path)
    assert image.shape[0] >= 600 and image.shape[1] >= 1000
    assert_not_blank(image, "study browser")


def test_sample_study_opens_and_plane_buttons_hang_it(make_napari_viewer, screenshot_dir):
    from hlip_napari._sample_data import make_sample_study
    from hlip_napari._view import show_plane

    layer_data = make_sample_study()  # the demo's phantom MR study with a tumour, written as DICOM
    planes = [d[1]["metadata"]["orientation"] for d in layer_data]
    assert len(layer_data) >= 2 and "axial" in planes, planes
    assert all(d[1]["metadata"]["modality"] == "MR" for d in layer_data)
    viewer = make_napari_viewer(show=True)
    widgets = dock_widgets(viewer, ("Study browser",))
    for data, kwargs, _kind in layer_data:
        viewer.add_image(data, **kwargs)
    assert widgets["Study browser"].table.rowCount() == len(layer_data)
    show_plane(viewer, "sagittal")
    assert tuple(viewer.dims.order) == (2, 0, 1) and camera(viewer).orientation2d == ("up", "right")
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert_not_blank(shot, "sagittal sample")
    save_screenshot(viewer, screenshot_dir / "sample_sagittal.png")


def test_300_slice_study_opens_within_3_seconds(tmp_path, make_napari_viewer, qtbot):
    """4 series x 75 slices of 512 x 512 (a 300-slice CT study): read, placed, drawn in <= 3 s."""
    folder = write_big_study(tmp_path / "big", n_series=4, slices=75, size=512)
    viewer = make_napari_viewer(show=True)
    browser = dock_widgets(viewer, ("Study browser",))["Study browser"]
    from qtpy.QtWidgets import QApplication

    from hlip_napari._reader import get_reader

    t0, c0 = time.perf_counter(), time.process_time()
    layer_data = get_reader(str(folder))(str(folder))
    t_read = time.perf_counter() - t0
    for data, kwargs, _kind in layer_data:
        viewer.add_image(data, **kwargs)
    QApplication.processEvents()
    viewer.screenshot(canvas_only=True, flash=False)  # forces a real draw of the first scan
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = os.getloadavg()[0]
    print(f"\n300-slice study: read {t_read:.2f} s, shown after {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(load average {load:.1f} on {os.cpu_count()} cores)")
    assert len(viewer.layers) == 4 and sum(layer.data.shape[0] for layer in viewer.layers) == 300
    assert browser.table.rowCount() == 4
    # on a machine shared beyond its cores, wall time measures the neighbours: then hold our CPU time to it
    busy = load > (os.cpu_count() or 1)
    spent = cpu if busy else wall
    assert spent <= 3.0, f"opening a 300-slice study took {wall:.2f} s wall, {cpu:.2f} s CPU (read {t_read:.2f} s)"


def test_launch_headless_saves_a_screenshot(tmp_path, screenshot_dir):
    """What the project's main command does: open napari with the plugin, save a screenshot, exit."""
    folder, _m, _a = write_two_plane_study(tmp_path / "study")
    path = screenshot_dir / "launch_headless.png"
    code = f"import hlip_napari; hlip_napari.launch(study={str(folder)!r}, screenshot={str(path)!r})"
    env = {**os.environ, "HLIP_NAPARI_CONFIG_DIR": str(tmp_path / "cfg")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    from imageio.v3 import imread

    assert_not_blank(imread(path), "launch screenshot")
