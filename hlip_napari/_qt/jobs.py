"""Running engine work off the Qt thread: napari thread workers with progress, cancel and plain errors.

A job is a generator function that yields short progress messages (one per step) and returns its
result; the viewer never waits for it. Errors become napari notifications that say what to do; a
server's (:class:`hlip_engine.remote.EngineError`) also name their kind (auth, too large, busy, down ...)
and carry its reason and advice.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from hlip_engine.remote import EngineError
from hlip_engine.study import StudyLoadError

# what went wrong with a server, by EngineError.kind: named first in its notification
SERVER_PROBLEMS = {"auth": "auth", "too_large": "too large for the server", "busy": "server busy",
                   "down": "server down", "not_found": "not on the server", "bad_request": "refused by the server",
                   "server": "server error"}


def advice(exc: BaseException) -> str:
    """What the radiologist can do about an error, in one sentence."""
    if isinstance(exc, EngineError):  # a server's answer (401, 413, 429, down ...): its own advice
        return exc.advice
    if isinstance(exc, StudyLoadError):
        return "Choose a folder holding one study (DICOM files, a DICOMDIR, NIfTI files or HLIP .pt tensors)."
    if isinstance(exc, FileNotFoundError):
        return "Check the path in the widget (model checkpoint, text model folder or index folder)."
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "Use the CPU device, or a study with fewer scans."
    if isinstance(exc, ValueError):
        return "Check the inputs named in the message."
    return "See the terminal for the traceback, and report it if the inputs look right."


def message(title: str, exc: BaseException) -> str:
    """The notification of a failed job: what failed, why, and what to do."""
    if isinstance(exc, EngineError) and not (exc.kind == "bad_request" and exc.status is None):
        problem = SERVER_PROBLEMS.get(exc.kind, SERVER_PROBLEMS["server"])  # (not a request this computer refused)
        return f"{title} failed ({problem}): {exc.reason}\n{advice(exc)}"
    return f"{title} failed: {exc}\n{advice(exc)}"


def follow(widget, emitter, callback) -> None:
    """Connect ``callback`` to a napari/psygnal ``emitter`` until ``widget`` is destroyed.

    Widgets close before the viewer (a dock closed by the user, a test tearing down); without this, the
    viewer's events would call into a deleted Qt object.
    """
    emitter.connect(callback)

    def _drop(*_args):
        try:
            emitter.disconnect(callback)
        except (RuntimeError, ValueError, TypeError):
            pass

    widget.destroyed.connect(_drop)


def follow_layer(widget, followed, layer, event: str, callback) -> None:
    """:func:`follow` ``layer.events.<event>`` with ``callback(layer)``, once per layer (``followed``, a
    ``weakref.WeakSet``, remembers which), holding the layer only weakly: layers re-used across studies keep
    their connections, and must not pin what they showed before."""
    import weakref

    if layer in followed:
        return
    followed.add(layer)
    ref = weakref.ref(layer)

    def sync(_event=None):
        obj = ref()
        if obj is not None:
            callback(obj)

    follow(widget, getattr(layer.events, event), sync)


class Job:
    """One running worker owned by a widget: start, cancel, and route its results and errors."""

    def __init__(self, title: str, on_busy: Callable[[bool], None] | None = None):
        self.title = title
        self.worker = None
        self._busy_listeners = [on_busy] if on_busy else []
        self._cancel_listeners: list[Callable[[], None]] = []

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the user cancels a running job (to say "cancelled" where it said "...ing")."""
        self._cancel_listeners.append(callback)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, func: Callable[..., Generator[str, None, Any]], *args, steps: int,
              on_done: Callable[[Any], None], on_error: Callable[[BaseException], None] | None = None,
              progress: bool = True, screen=None, **kwargs) -> Any:
        """Run ``func(*args, **kwargs)`` (a generator of progress messages) in a thread worker.

        ``screen`` (the viewer's :class:`~hlip_napari._on_screen.OnScreen`): the job is for the study on
        screen now; ``on_done`` / ``on_error`` are not called once another study is shown.

        ``progress=False`` skips the activity-panel bar: for jobs of milliseconds (a search once the model
        and index are loaded) its widgets would cost more than the job.
        """
        from napari.qt.threading import create_worker

        if self.worker is not None:
            self._stop()  # a new request replaces the running one (not a cancel: no "cancelled")
        if screen is not None:  # work for the study on screen: its result is dropped once another is shown
            ticket = screen.ticket()
            on_done = _if_current(screen, ticket, on_done)
            on_error = _if_current(screen, ticket, on_error) if on_error is not None else None
        worker = create_worker(func, *args, _start_thread=False,
                               _connect={"errored": lambda exc: self._errored(exc, on_error)}, **kwargs)
        if progress:
            # the activity-panel bar is built now, before the worker competes for the GIL (napari would
            # build it on the worker's "started" signal, while the worker is busy)
            from napari.utils import progress as napari_progress

            pbar = napari_progress(total=steps, desc=self.title)
            worker.pbar = pbar
            worker.yielded.connect(lambda msg: (pbar.increment_with_overflow(),
                                                pbar.set_description(f"{self.title}: {msg}")))
            worker.finished.connect(pbar.close)
        worker.returned.connect(on_done)
        worker.finished.connect(lambda w=worker: self._finished(w))
        self.worker = worker
        self._set_busy(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the worker to stop at its next step; its result is dropped, and the widget says so."""
        if self._stop():
            for listener in self._cancel_listeners:
                listener()

    def stop(self) -> None:
        """Stop the running worker, if any, without a word (the study it worked for left the screen)."""
        self._stop()

    def _stop(self) -> bool:
        """Stop the running worker (if any) and drop its result; True when one was running."""
        worker, self.worker = self.worker, None
        if worker is not None:
            try:
                worker.returned.disconnect()
            except (TypeError, RuntimeError):  # nothing connected, or already finished
                pass
            worker.quit()
        self._set_busy(False)
        return worker is not None

    def _finished(self, worker) -> None:
        if worker is self.worker:
            self.worker = None
            self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        for listener in self._busy_listeners:
            listener(busy)

    def buttons(self, action, *extra):
        """A row: ``action`` (stretching), any ``extra`` widgets, then a Cancel button for this job.

        While the job runs the action is disabled and Cancel enabled. Returns ``(layout, cancel_button)``.
        """
        from qtpy.QtWidgets import QHBoxLayout, QPushButton

        cancel = QPushButton("Cancel")
        cancel.setEnabled(False)
        cancel.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(action, 1)
        for widget in extra:
            row.addWidget(widget)
        row.addWidget(cancel)
        self._busy_listeners.append(lambda busy: (action.setEnabled(not busy), cancel.setEnabled(busy)))
        return row, cancel

    def _errored(self, exc: BaseException, on_error) -> None:
        from napari.utils.notifications import show_error

        if getattr(on_error, "stale", lambda: False)():
            return  # for a study no longer on screen: nothing to say about it
        show_error(message(self.title, exc))
        if on_error is not None:
            on_error(exc)


def _if_current(screen, ticket, callback):
    """``callback`` called only while the study ``ticket`` was taken for is still on screen."""

    def call(*args):
        if screen.is_current(ticket):
            return callback(*args)
        return None

    call.stale = lambda: not screen.is_current(ticket)
    return call
