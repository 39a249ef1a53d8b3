"""Layers the plugin removes (a closed study's overlays, rulers, surplus scans), collected while the reader
is not using the mouse wheel, buttons or keys.

napari follows every batch of layer removals with a full garbage collection (``gc.collect()`` in its canvas:
a workaround for a Windows OpenGL driver that crashed on GL objects still alive while the scene graph
changed). A removed layer lives in reference cycles, so only a full collection frees it and its voxels, and
a full collection costs 70-160 ms on a 2-core machine with the 3-up planes docked (~200,000 objects tracked
even after the warm-up's freeze): on top of the removal and the repaint after it, the switch to the next
study froze the viewer for 200-300 ms. Skipped altogether, the garbage piles up until Python's own full
collection comes, at a moment nobody chose (seen: in the middle of a repaint).

Off Windows the plugin therefore runs that collection itself once no click, key or wheel has come and no
step of the plugin's own work has run for ``QUIET_S`` (the reader looking at the study just opened), and at
the latest ``LATEST_S`` after the removal. The closed study itself goes at once: a removed layer's metadata (which
holds the study, with every scan's voxels) is cleared. On Windows napari's own order is kept.
"""
from __future__ import annotations

import gc
import sys
import time

QUIET_S = 1.0
LATEST_S = 5.0


class _CollectionAsked:
    """Stands in for the ``gc`` module in napari's canvas while the plugin removes layers: napari's full
    collection is noted, not run."""

    def __init__(self, real):
        self.real, self.asked = real, False

    def collect(self, *_args, **_kwargs) -> int:
        self.asked = True
        return 0

    def __getattr__(self, name):
        return getattr(self.real, name)


class Collector:
    """One collection to come: a timer, and an application event filter noting the reader's input."""

    def __init__(self):
        from qtpy.QtCore import QEvent, QObject, QTimer
        from qtpy.QtWidgets import QApplication

        self.due: float | None = None  # the latest time the collection may wait for
        self.last_input = 0.0
        self.last_s = 0.0  # how long the last collection took
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._check)
        kinds = {QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease, QEvent.Type.MouseButtonDblClick,
                 QEvent.Type.Wheel, QEvent.Type.KeyPress}
        collector = self

        class InputSeen(QObject):
            def eventFilter(self, _obj, event):  # noqa: N802 - Qt's name
                if event.type() in kinds:
                    collector.last_input = time.monotonic()
                return False

        self.filter = InputSeen()
        self.app = QApplication.instance()

    def ask(self) -> None:
        now = time.monotonic()
        if self.due is None:
            self.due = now + LATEST_S
            self.app.installEventFilter(self.filter)  # only while a collection waits: no cost otherwise
        self.last_input = max(self.last_input, now)  # the removal came from the reader's own action
        self.timer.start(int(QUIET_S * 1000))

    def _check(self) -> None:
        now = time.monotonic()
        wait = QUIET_S - (now - self.last_input)
        if now < self.due and wait > 0:
            self.timer.start(int(max(wait, 0.1) * 1000))
            return
        self.run()

    def run(self) -> None:
        """Collect now, if a collection waits."""
        if self.due is None:
            return
        self.due = None
        self.timer.stop()
        self.app.removeEventFilter(self.filter)
        t = time.perf_counter()
        gc.collect()
        self.last_s = time.perf_counter() - t


_COLLECTOR: list[Collector] = []


def note_work() -> None:
    """The plugin did a step of work on the Qt thread (a layer added, a plane hung): not quiet yet."""
    if _COLLECTOR and _COLLECTOR[0].due is not None:
        _COLLECTOR[0].last_input = time.monotonic()


def collector() -> Collector | None:
    """The keeper of the collection to come (made on first use; None without a Qt application)."""
    if not _COLLECTOR:
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is None:
            return None
        _COLLECTOR.append(Collector())
    return _COLLECTOR[0]


def waiting() -> bool:
    """Whether a collection waits for the reader to be quiet."""
    return bool(_COLLECTOR) and _COLLECTOR[0].due is not None


def deferring() -> bool:
    """Whether the plugin defers napari's collection: everywhere but on Windows (its driver workaround)."""
    return sys.platform != "win32"


def remove_layers(viewer, layers) -> None:
    """Remove ``layers`` from ``viewer`` in one batch; off Windows, the collection napari would run at once
    runs when the reader is quiet (see the module's docstring)."""
    try:
        import napari._vispy.canvas as canvas_module
    except ImportError:  # pragma: no cover - napari moved its canvas: its own behaviour then
        canvas_module = None
    asked = None
    if deferring() and getattr(canvas_module, "gc", None) is gc and collector() is not None:
        asked = canvas_module.gc = _CollectionAsked(gc)
    try:
        with viewer.layers.batched_update():  # napari collects garbage once for the batch, not per layer
            for layer in list(layers):
                if layer in viewer.layers:
                    viewer.layers.remove(layer)
                    if asked is not None:
                        layer.metadata.clear()  # the closed study, with every scan's voxels: freed now
    finally:
        if asked is not None:
            canvas_module.gc = gc
    if asked is not None and asked.asked:
        collector().ask()
