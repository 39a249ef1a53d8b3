"""How long the viewer keeps a radiologist's hand waiting while the plugin opens a study, opens the next one,
shows relevance overlays and re-hangs the 3-up planes, measured beside napari doing the same layer changes
through its public API with no plugin, in the same run.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/gui_latency.py [--series 4 --slices 75 --size 512]
        [--rounds 3] [--json F]

The figure: the worst event-loop gap during an action (the longest interval between two ticks of a 5 ms
QTimer on the Qt thread; input waits at least that long). Each action runs ``--rounds`` times on each side,
alternating (napari alone, then the plugin), each side in its own viewer; the median of the worst gaps is
reported, and the ratio plugin / napari alone (target <= 1.25). The two sides:

- **napari alone**: a viewer with no plugin widget; ``viewer.add_image`` of the same layer data (same voxels,
  affines, contrast) and ``viewer.layers.remove`` of the previous study's layers, in one
  ``viewer.layers.batched_update()``, and for the 3-up two more ``napari.qt.QtViewer`` canvases docked,
  given the same layers.
- **the plugin**: a viewer with the Study browser, Zero-shot and Relevance widgets docked (and the 3-up
  for the 3-up action); the study opened by :func:`hlip_napari._show.show_study` (what every route calls),
  overlays added as the Relevance widget adds them.

Real DICOM written to a temporary folder and read by the engine's loader. Software OpenGL (Mesa) under Xvfb
on a shared machine: the ratio is the figure, the absolute milliseconds are this machine's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 1.25
ACTIONS = ("open", "next study", "overlays", "3-up next study")


class Probe:
    """Ticks every ``interval`` ms on the Qt thread; ``worst(t0, t1)`` = the longest gap in that window."""

    def __init__(self, interval: int = 5):
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def worst(self, t0: float, t1: float) -> float:
        during = [t for t in self.ticks if t0 - 0.02 <= t <= t1 + 0.02]
        return float(np.diff(during).max() * 1000) if len(during) > 1 else float("nan")


def settle(app, seconds: float = 0.4) -> None:
    """Let the viewer finish what an action left (repaints, deferred slices) before the next one."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


def timed(app, probe: Probe, action, after: float = 0.6) -> float:
    """The worst gap from the action's start until the viewer has been idle ``after`` seconds after it."""
    settle(app, 0.3)
    t0 = time.perf_counter()
    action()
    settle(app, after)
    return probe.worst(t0, time.perf_counter())


def write_study(folder: Path, n_series: int, slices: int, size: int, uid: str, seed: int) -> Path:
    from hlip_engine.io import write_dicom_series
    from hlip_engine.study import Scan

    rng = np.random.default_rng(seed)
    for s in range(n_series):
        vol = rng.integers(-1000, 1500, size=(slices, size, size)).astype(np.float32)
        affine = np.eye(4)
        affine[:3, :3] = np.diag([0.5 * 512 / size, 0.5 * 512 / size, 1.0 + s])
        affine[:3, 3] = (-128.0, -128.0, -40.0)
        write_dicom_series(Scan(voxels=vol, affine=affine, modality="CT", description=f"HEAD SERIES {s + 1}"),
                           folder / f"s{s + 1}", study_uid=uid, series_number=s + 1,
                           study_description="CT HEAD", study_date="20240103")
    return folder


def overlay_data(study) -> list[tuple]:
    from hlip_napari._layers import relevance_layer_data

    rng = np.random.default_rng(3)
    return [relevance_layer_data(study, k, rng.random(scan.shape, dtype=np.float32), "haemorrhage")
            for k, scan in enumerate(study.scans)]


class NapariAlone:
    """The same layer changes, napari's public API only, no plugin."""

    def __init__(self, napari):
        self.viewer = napari.Viewer(show=True)
        self.viewer.window.resize(1600, 1000)
        self.planes = []

    def show(self, study) -> None:
        from hlip_napari._layers import study_layer_data

        data = study_layer_data(study)
        for viewer in [self.viewer, *self.planes]:
            with viewer.layers.batched_update():  # napari's own way to change several layers at once
                for layer in list(viewer.layers):
                    viewer.layers.remove(layer)
                for voxels, kwargs, _kind in data:
                    viewer.add_image(voxels, **kwargs)

    def overlays(self, study) -> None:
        for voxels, kwargs, _kind in overlay_data(study):
            self.viewer.add_image(voxels, **kwargs)

    def dock_planes(self) -> None:
        from napari.components import ViewerModel
        from napari.qt import QtViewer
        from qtpy.QtWidgets import QVBoxLayout, QWidget

        box = QWidget()
        layout = QVBoxLayout(box)
        for name in ("coronal", "sagittal"):
            model = ViewerModel(title=name)
            qt = QtViewer(model)
            qt.setParent(box)
            qt.hide()
            layout.addWidget(qt.canvas.native, 1)
            self.planes.append(model)
        self.viewer.window.add_dock_widget(box, name="planes", area="right")

    def close(self) -> None:
        self.viewer.close()


class WithPlugin:
    def __init__(self, napari):
        from hlip_napari._launch import dock_widgets

        self.viewer = napari.Viewer(show=True)
        self.viewer.window.resize(1600, 1000)
        self.docks = dock_widgets(self.viewer, ("Study browser", "Zero-shot prompts", "Relevance map"))
        self.hanging = None

    def show(self, study) -> None:
        from hlip_napari._show import show_study

        show_study(self.viewer, [study])

    def overlays(self, study) -> None:
        for voxels, kwargs, _kind in overlay_data(study):
            self.viewer.add_image(voxels, **kwargs)

    def dock_planes(self) -> None:
        self.hanging = self.docks["Study browser"].hang_3up()

    def close(self) -> None:
        if self.hanging is not None:
            self.hanging.close_canvases()
        self.viewer.close()


def run_side(app, probe, side, studies, rounds_out: dict) -> None:
    a, b = studies
    rounds_out.setdefault("open", []).append(timed(app, probe, lambda: side.show(a)))
    rounds_out.setdefault("next study", []).append(timed(app, probe, lambda: side.show(b)))
    rounds_out.setdefault("overlays", []).append(timed(app, probe, lambda: side.overlays(b)))
    side.dock_planes()
    settle(app, 1.0)
    rounds_out.setdefault("3-up next study", []).append(timed(app, probe, lambda: side.show(a), after=1.0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    tmp = Path(tempfile.mkdtemp(prefix="hlip-gui-latency-"))
    os.environ.setdefault("HLIP_NAPARI_CONFIG_DIR", str(tmp / "config"))
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        from hlip_engine import load_study

        studies = [load_study(write_study(tmp / name, args.series, args.slices, args.size, uid, seed))
                   for name, uid, seed in (("a", "1.2.826.0.1.3680043.8.498.11", 1),
                                           ("b", "1.2.826.0.1.3680043.8.498.12", 2))]
        app = QApplication.instance() or napari.qt.get_qapp()
        probe = Probe()
        figures = {"napari alone": {}, "plugin": {}}
        for _ in range(args.rounds):
            for name, make in (("napari alone", NapariAlone), ("plugin", WithPlugin)):
                side = make(napari)
                settle(app, 1.0)
                run_side(app, probe, side, studies, figures[name])
                side.close()
                settle(app, 0.5)
        out = {"machine": f"{os.cpu_count()} cores, Xvfb + Mesa", "date": time.strftime("%Y-%m-%d"),
               "study": f"{args.series} series x {args.slices} slices x {args.size}^2", "rounds": args.rounds,
               "actions": {}}
        ok = True
        for action in ACTIONS:
            alone = statistics.median(figures["napari alone"][action])
            ours = statistics.median(figures["plugin"][action])
            ratio = ours / alone
            ok &= ratio <= TARGET_RATIO
            out["actions"][action] = {"napari_alone_ms": round(alone, 1), "plugin_ms": round(ours, 1),
                                      "ratio": round(ratio, 2),
                                      "napari_alone_rounds_ms": [round(x) for x in figures["napari alone"][action]],
                                      "plugin_rounds_ms": [round(x) for x in figures["plugin"][action]]}
            print(f"{action:16s} napari alone {alone:7.1f} ms   plugin {ours:7.1f} ms   ratio {ratio:4.2f}"
                  f"   {'ok' if ratio <= TARGET_RATIO else 'OVER'} (<= {TARGET_RATIO})")
        out["all_within_target"] = ok
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
