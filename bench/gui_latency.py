"""How long the viewer keeps a radiologist's hand waiting while the plugin opens a 4-series study, inserts
relevance overlays, searches, and re-hangs the 3-up planes. Each must stay <= 100 ms.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/gui_latency.py [--size 512 --slices 75] [--json F]

Two measures, both on the Qt thread of a real napari viewer with the plugin's docked widgets:

- **input latency** (the figure judged): a separate process moves the X pointer over the plugin's panel every
  5 ms through the X server's XTest extension, as a mouse does; each motion's latency is the time from its
  sending to Qt handing it to the window. The worst one during an action is what the hand feels (a freeze).
  Needs libXtst (Debian ``libxtst6``, installed by scripts/setup.sh).
- **timer gap** (an upper bound, kept for comparison with earlier figures): the longest interval between two
  ticks of a 5 ms QTimer. Qt's GLib event loop runs a timer that has fired at idle priority until the loop is
  idle (``runWithIdlePriority`` in qeventdispatcher_glib.cpp), so a chain of short event-loop turns, each
  letting input through, reads as one gap.

Each repaint of the main window is timed too (Qt's UpdateRequest: with software OpenGL, as here, composing
the window costs tens of ms whatever the plugin does). Real DICOM written to a temporary folder, a tiny HLIP
model (random weights: the timing does not depend on what it learned).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LIMIT_MS = 100.0


class Probe:
    """Ticks every ``interval`` ms on the Qt thread; ``worst(t0, t1)`` = the longest gap in that window."""

    def __init__(self, interval: int = 5):
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def gaps(self, t0: float, t1: float, top: int = 3) -> list[tuple[float, float]]:
        """The ``top`` longest gaps (ms) and when they began (s after t0)."""
        during = [t for t in self.ticks if t0 - 0.02 <= t <= t1 + 0.02]
        gaps = sorted(((b - a) * 1000, a - t0) for a, b in zip(during, during[1:]))[::-1]
        return [(round(g), round(at, 2)) for g, at in gaps[:top]]

    def worst(self, t0: float, t1: float) -> float:
        during = [t for t in self.ticks if t0 - 0.02 <= t <= t1 + 0.02]
        return float(np.diff(during).max() * 1000) if len(during) > 1 else float("nan")


class XInput:
    """Moves the X pointer every 5 ms from another process (XTest, as a mouse does) and times when Qt hands
    each motion to a window: ``worst(t0, t1)`` = the longest wait of a motion sent in that window (ms)."""

    SPAN_X, SPAN_Y = 100, 5  # positions cycle over 500 pixels: a motion is matched within 2.5 s of waiting

    def __init__(self, app, widget, seconds: float = 600.0):
        import subprocess

        from qtpy.QtCore import QEvent, QObject
        from qtpy.QtGui import QWindow

        centre = widget.mapToGlobal(widget.rect().center())
        self.x0, self.y0 = centre.x() - self.SPAN_X // 2, centre.y() - self.SPAN_Y // 2
        self.handled: list[tuple[float, int]] = []
        handled, x0, y0, span = self.handled, self.x0, self.y0, self.SPAN_X
        move, window = QEvent.Type.MouseMove, QWindow

        class Filter(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
                if event.type() == move and isinstance(obj, window):
                    pos = event.globalPosition()
                    handled.append((time.perf_counter(), (int(pos.y()) - y0) * span + int(pos.x()) - x0))
                return False

        self.filter = Filter()
        app.installEventFilter(self.filter)
        self.log = Path(tempfile.mkstemp(prefix="hlip-xinput-", suffix=".bin")[1])
        self.proc = subprocess.Popen([sys.executable, __file__, "--x-mover", str(self.x0), str(self.y0),
                                      str(self.log), str(seconds)])

    def sent(self) -> list[tuple[float, int]]:
        data = self.log.read_bytes()
        return [struct.unpack_from("dI", data, 16 * k) for k in range(len(data) // 16)]

    def worst(self, t0: float, t1: float) -> tuple[float, int]:
        """(worst latency ms, motions sent) for motions sent between t0 and t1."""
        n = self.SPAN_X * self.SPAN_Y
        sent = [m for m in self.sent() if t0 <= m[0] <= t1]
        handled = [h for h in self.handled if h[0] >= t0]
        worst, j, self.worst_at = float("nan"), 0, None
        for at, i in sent:
            while j < len(handled) and handled[j][0] < at:
                j += 1
            # the first window event at or after the sending that carries this motion or a later one (Qt
            # compresses queued motions into the last)
            k = next((m for m in range(j, len(handled)) if (handled[m][1] - i) % n < n // 2), None)
            if k is not None:
                wait = (handled[k][0] - at) * 1000
                if not worst >= wait:
                    worst, self.worst_at = wait, at
        return round(worst, 1), len(sent)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def x_mover(x0: int, y0: int, log: str, seconds: float) -> int:
    """The other process: a pointer motion every 5 ms through XTest, each one's send time logged."""
    import ctypes

    x11, xtst = ctypes.CDLL("libX11.so.6"), ctypes.CDLL("libXtst.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    display = ctypes.c_void_p(x11.XOpenDisplay(None))
    n = XInput.SPAN_X * XInput.SPAN_Y
    end, i = time.perf_counter() + seconds, 0
    with open(log, "wb", buffering=0) as f:
        while time.perf_counter() < end:
            k = i % n
            xtst.XTestFakeMotionEvent(display, 0, x0 + k % XInput.SPAN_X, y0 + k // XInput.SPAN_X, 0)
            x11.XFlush(display)
            f.write(struct.pack("dI", time.perf_counter(), k))
            i += 1
            time.sleep(0.005)
    return 0


class RepaintTimer:
    """Times each repaint of napari's main window (Qt's UpdateRequest: the window's widgets painted and,
    with a GL canvas inside, composed by OpenGL; in software here): ``during(t0, t1)`` = (count, median
    ms, max ms) of the repaints in that window, the part of a gap no plugin code can shorten."""

    def __init__(self):
        from napari._qt.qt_main_window import _QtMainWindow
        from qtpy.QtCore import QEvent

        self.spans: list[tuple[float, float]] = []
        original, kind, spans = _QtMainWindow.event, QEvent.Type.UpdateRequest, self.spans

        def event(window, e, _original=original):
            if e.type() != kind:
                return _original(window, e)
            t = time.perf_counter()
            try:
                return _original(window, e)
            finally:
                spans.append((t, time.perf_counter() - t))

        _QtMainWindow.event = event

    def during(self, t0: float, t1: float) -> tuple[int, float, float]:
        ms = [d * 1000 for t, d in self.spans if t0 <= t <= t1]
        return (len(ms), round(float(np.median(ms)), 1), round(max(ms), 1)) if ms else (0, 0.0, 0.0)


def wait_until(app, condition, timeout: float = 120.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the action did not finish in time")
        app.processEvents()
        time.sleep(0.002)


def settle(app, seconds: float = 0.3) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


def write_study(folder: Path, n_series: int, slices: int, size: int, uid: str = "1.2.826.0.1.3680043.8.498.1") -> Path:
    from hlip_engine.io import write_dicom_series
    from hlip_engine.study import Scan

    rng = np.random.default_rng(1)
    for s in range(n_series):
        vol = rng.integers(-1000, 1500, size=(slices, size, size)).astype(np.float32)
        affine = np.eye(4)
        affine[:3, :3] = np.diag([0.5 * 512 / size, 0.5 * 512 / size, 1.0 + s])
        affine[:3, 3] = (-128.0, -128.0, -40.0)
        write_dicom_series(Scan(voxels=vol, affine=affine, modality="CT", description=f"HEAD SERIES {s + 1}"),
                           folder / f"s{s + 1}", study_uid=uid, series_number=s + 1,
                           study_description="CT HEAD", study_date="20240103")
    return folder


def write_index(root: Path, model, checkpoint: Path, n: int = 20_000) -> Path:
    from hlip_engine.index import IndexBuild
    from hlip_engine.model.checkpoint import model_fingerprint

    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(n, model.embed_dim)).astype(np.float32)
    meta = [dict(key=f"k{i}", path=f"/archive/{i}", study_uid=f"1.{i}", date="20240101", modality="MR",
                 description=f"study {i}", n_scans=4, recipe="brain-mri",
                 impression=f"impression of study {i}: no acute abnormality") for i in range(n)]
    index = IndexBuild.create(root, model.embed_dim, checkpoint.name, model_hash=model_fingerprint(checkpoint))
    index.add(vectors, meta)
    index.commit()
    return root


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--x-mover"]:
        return x_mover(int(argv[1]), int(argv[2]), argv[3], float(argv[4]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--no-x-input", action="store_true", help="the timer gap only (no XTest pointer motions)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hlip-gui-latency-"))
    try:
        return measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # two studies and an index: ~0.5 GB


def measure(args, tmp: Path) -> int:
    os.environ.setdefault("HLIP_NAPARI_CONFIG_DIR", str(tmp / "config"))
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from hlip_engine import create_model
    from hlip_napari._launch import dock_widgets
    from hlip_napari._layers import scan_layers
    from hlip_napari._session import INDEXES, MODELS, SETTINGS

    torch.manual_seed(0)
    checkpoint = tmp / "hlip_tiny.safetensors"
    model = create_model("hlip_tiny", embed_dim=512)
    model.save(checkpoint)
    SETTINGS.update(checkpoint=str(checkpoint), text_model="", device="cpu")
    folder = write_study(tmp / "study", args.series, args.slices, args.size)
    second = write_study(tmp / "study2", args.series, args.slices, args.size, uid="1.2.826.0.1.3680043.8.498.2")
    index = write_index(tmp / "index", model, checkpoint)

    repaints = RepaintTimer()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    widgets = dock_widgets(viewer, ("Study browser", "Search studies", "Relevance map"))
    browser, search, rel = widgets["Study browser"], widgets["Search studies"], widgets["Relevance map"]
    probe = Probe()
    settle(app, 1.5)  # the viewer idle after start-up, as before anyone picks a study (the plugin warms up)
    xinput = None
    if not args.no_x_input:
        try:
            xinput = XInput(app, browser.title)
        except OSError as e:  # no libXtst: the timer gap only
            print(f"no X input probe ({e}); install libxtst6 for it. Judging the timer gap instead.")
    out: dict[str, float] = {}
    # the plugin's start-up warm-up: the engine's modules imported on a thread, then gc.freeze() (hlip_napari/
    # _warmup.py; HLIP_NAPARI_GC_FREEZE=0 measures without it)
    from hlip_napari import _warmup

    t0 = time.perf_counter()
    wait_until(app, _warmup.done, timeout=120)
    settle(app, 0.3)
    out["warm_up_s"] = 1.5 + time.perf_counter() - t0
    out["warm_up_worst_gap_ms"] = probe.worst(t0 - 1.5, time.perf_counter())
    out["gc_frozen"] = gc.get_freeze_count()
    judged: list[str] = []

    def record(name: str, t0: float, t1: float, judge: bool = True) -> None:
        gap = probe.worst(t0, t1)
        if xinput is not None:
            latency, sent = xinput.worst(t0, t1)
            out[f"{name}_ms"], out[f"{name}_input_sent"] = latency, sent
        else:
            latency, sent = gap, 0
            out[f"{name}_ms"] = gap
        out[f"{name}_timer_gap_ms"] = gap
        if judge:
            judged.append(name)
        at = f" at {xinput.worst_at - t0:.2f} s" if xinput is not None and xinput.worst_at else ""
        print(f"{name}: worst input latency {latency} ms{at} ({sent} motions); timer gaps (ms, at s):",
              probe.gaps(t0, t1), "; window repaints (n, median, max ms):", repaints.during(t0, t1))

    from hlip_napari import _garbage

    def reading_pause(name: str) -> None:
        """The reader looks at what came: the plugin's deferred garbage collection (hlip_napari/_garbage.py)
        runs now, after QUIET_S without a click, key or wheel; timed on its own, not judged (nobody acts)."""
        if not _garbage.waiting():
            return
        t0 = time.perf_counter()
        wait_until(app, lambda: not _garbage.waiting(), timeout=30)
        settle(app, 0.2)
        record(f"{name}_collection", t0, time.perf_counter(), judge=False)
        out[f"{name}_collection_took_ms"] = round(_garbage.collector().last_s * 1000, 1)

    # 1. open a 4-series study (the browser's worker reads; the Qt thread adds layers and draws)
    t0 = time.perf_counter()
    browser.open_path(str(folder))
    wait_until(app, lambda: len(scan_layers(viewer)) == args.series and browser.table.rowCount() == args.series)
    settle(app, 0.3)
    t1 = time.perf_counter()
    record("open_study", t0, t1)
    out["open_study_total_s"] = t1 - t0

    # 1b. the next study (the first study of a napari session also pays one-off costs: GL shader programs
    # of the image and overlay visuals, compiled in software by Mesa here); the one on screen closes
    t0 = time.perf_counter()
    browser.open_path(str(second))
    wait_until(app, lambda: len(scan_layers(viewer)) == args.series and browser.study is not None
               and browser.study.uid.endswith(".2") and browser.table.rowCount() == args.series)
    settle(app, 0.3)
    record("open_next_study", t0, time.perf_counter())
    reading_pause("open_next_study")
    # back to the first study for the overlays below
    browser.open_path(str(folder))
    wait_until(app, lambda: browser.study is not None and browser.study.uid.endswith(".1")
               and len(scan_layers(viewer)) == args.series)
    settle(app, 0.3)
    reading_pause("back_to_first")

    # 2. relevance overlays: computed off the clock (the widget's worker does it), inserted while probed
    from hlip_engine.relevance import relevance

    study = browser.study
    loaded = MODELS.get(SETTINGS.settings)
    result = relevance(loaded, loaded.prepare(study, recipe="head-ct"), "haemorrhage")
    volumes = [np.ascontiguousarray(v, dtype=np.float32) for v in result.display_volumes()]  # as the worker
    from hlip_napari._qt.plot import render_bars

    bars = render_bars([str(k) for k in range(len(volumes))], [1 / max(len(volumes), 1)] * len(volumes))
    settle(app, 1.0)  # torch's worker threads go quiet

    def insert_overlays(name: str) -> None:
        t0 = time.perf_counter()
        rel.show_result(study, result, volumes, bars)
        wait_until(app, lambda: not getattr(rel, "_pending", None))
        settle(app, 0.3)
        record(name, t0, time.perf_counter())
        reading_pause(name)

    insert_overlays("relevance_overlays")
    out["relevance_overlays"] = len(scan_layers(viewer, study, kind="relevance"))
    # again (a second prompt): the first run also pays one-off costs (the overlay colormap's GL program)
    insert_overlays("relevance_overlays_again")

    # 3. a search on a 20,000-study index, model and index loaded (as after the first query)
    search.set_index(str(index))
    search.search("warm up")
    wait_until(app, lambda: search.table.rowCount() > 0)
    search.rows = []
    settle(app)
    t0 = time.perf_counter()
    search.search("acute left MCA stroke")
    wait_until(app, lambda: len(search.rows) > 0)
    settle(app, 0.2)
    record("search", t0, time.perf_counter())
    out["search_total_ms"] = search.last_ms

    # 4. with the 3-up hanging docked: the next study (the coronal and sagittal canvases re-hang it too)
    hanging = dock_widgets(viewer, ("3-up hanging",))["3-up hanging"]
    wait_until(app, lambda: not hanging._pending)  # hung (its planes' first draws), off the clock
    settle(app, 1.0)
    reading_pause("hang_3up")
    for name, path, tail in (("open_next_study_3up", second, ".2"), ("open_next_study_3up_again", folder, ".1")):
        t0 = time.perf_counter()
        browser.open_path(str(path))
        wait_until(app, lambda tail=tail: browser.study is not None and browser.study.uid.endswith(tail)
                   and len(scan_layers(viewer)) == args.series and not hanging._pending)
        settle(app, 0.5)
        record(name, t0, time.perf_counter())
        reading_pause(name)
    hanging.close_canvases()

    out["probe"] = "X input (XTest)" if xinput is not None else "timer gap"
    if xinput is not None:
        xinput.stop()
    out["load_average"] = os.getloadavg()[0]
    out["cpus"] = os.cpu_count() or 1
    out["study"] = f"{args.series} series x {args.slices} slices x {args.size}^2"
    over = [name for name in judged if not out[f"{name}_ms"] <= LIMIT_MS]
    for key, value in out.items():
        print(f"{key:34s} {value:.1f}" if isinstance(value, float) else f"{key:34s} {value}")
    print("OK: every worst latency <= 100 ms" if not over else f"OVER 100 ms: {', '.join(over)}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    MODELS.clear()
    INDEXES.clear()
    viewer.close()
    return 0 if not over else 1


if __name__ == "__main__":
    sys.exit(main())
