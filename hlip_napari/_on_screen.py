"""What is on screen: the one source of truth every widget renders from. No Qt, no napari.

A viewer has one :class:`OnScreen`: the study the radiologist reads (and the prior shown beside it in
compare mode). Changing the study is one transaction: :meth:`OnScreen.begin` starts it (a new *generation*:
work started for the old study is now stale, and the widgets drop its results), :meth:`OnScreen.show` ends it
and emits ``study_changed`` once, after the new study's layers are all in the viewer. A failed open never
begins a transaction, so the study on screen stays.

Work off the Qt thread takes a :meth:`OnScreen.ticket` when it starts and asks :meth:`OnScreen.is_current`
before it touches the viewer with its result.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

from psygnal import Signal


@dataclass(frozen=True)
class Ticket:
    """Which study a piece of work was started for, and in which generation of the screen."""

    generation: int
    study: object


class OnScreen:
    """The study on screen (``study``), the compare prior (``prior``), and the study on its way in."""

    study_changed = Signal(object)  # the new study, or None when the screen was emptied
    failed = Signal(str)  # an open that failed, in words: the study on screen stays

    def __init__(self) -> None:
        self.study = None
        self.prior = None
        self.incoming = None  # a study whose layers are being added (between begin and show)
        self.generation = 0
        self.last_failure = ""

    def begin(self, study) -> int:
        """A study switch starts: everything started before is stale from now on. Returns the generation."""
        self.generation += 1
        self.incoming = study
        return self.generation

    def show(self, study) -> None:
        """The switch ends: ``study``'s layers are in; every widget re-renders (``study_changed``)."""
        if self.incoming is not study:  # shown without a begin (a study re-shown): still a new generation
            self.generation += 1
        self.incoming = None
        self.study = study
        self.last_failure = ""
        self.study_changed.emit(study)

    def clear(self) -> None:
        """Nothing on screen any more (the reader closed the study's layers)."""
        if self.study is None and self.incoming is None:
            return
        self.generation += 1
        self.incoming = None
        self.study = None
        self.study_changed.emit(None)

    def fail(self, reason: str) -> None:
        """An open failed: nothing changes on screen; the widgets say why."""
        self.last_failure = reason
        self.failed.emit(reason)

    def set_prior(self, study) -> None:
        self.prior = study

    @property
    def switching(self) -> bool:
        """Between :meth:`begin` and :meth:`show`: layer events belong to the switch, not to the reader."""
        return self.incoming is not None

    def ticket(self) -> Ticket:
        return Ticket(self.generation, self.study)

    def is_current(self, ticket: Ticket) -> bool:
        """Whether work started with ``ticket`` is still for the study on screen."""
        return ticket.generation == self.generation and ticket.study is self.study and self.study is not None


_SCREENS: dict[int, tuple[weakref.ref, OnScreen]] = {}


def on_screen(viewer) -> OnScreen:
    """The :class:`OnScreen` of ``viewer`` (the viewer itself, not npe2's proxy: see ``unwrap``)."""
    key = id(viewer)
    found = _SCREENS.get(key)
    if found is not None and found[0]() is viewer:
        return found[1]
    for stale in [k for k, (ref, _s) in _SCREENS.items() if ref() is None]:
        del _SCREENS[stale]
    screen = OnScreen()
    _SCREENS[key] = (weakref.ref(viewer), screen)
    return screen
