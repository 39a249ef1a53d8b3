"""The start-up warm-up: the engine's modules imported while napari is idle, then gc.freeze(), so a removed
layer's collection is cheap and still frees it (napari's clean-up of its GL objects depends on that)."""
from __future__ import annotations

import gc
import sys
import time
import weakref

import numpy as np
import pytest

from hlip_napari import _warmup


@pytest.fixture
def fresh_warmup(monkeypatch):
    monkeypatch.setenv("HLIP_NAPARI_GC_FREEZE", "1")
    monkeypatch.setitem(_warmup._state, "started", False)
    monkeypatch.setitem(_warmup._state, "frozen", False)
    monkeypatch.setitem(_warmup._state, "skipped", "")
    monkeypatch.setitem(_warmup._state, "imported", __import__("threading").Event())
    yield
    gc.unfreeze()  # the rest of this test process collects as before


def _wait(qtbot, condition, timeout=120_000):
    qtbot.waitUntil(condition, timeout=timeout)


def test_idle_viewer_imports_the_engine_then_freezes_and_layers_are_still_collected(make_napari_viewer, qtbot,
                                                                                     fresh_warmup):
    from hlip_napari._reading import reading

    viewer = make_napari_viewer()
    reading(viewer)  # what every plugin widget does first: starts the warm-up once
    _wait(qtbot, _warmup.done)
    assert _warmup._state["frozen"] and not _warmup._state["skipped"]
    assert gc.get_freeze_count() > 100_000  # torch and transformers' objects, permanent now
    assert "transformers.modeling_utils" in sys.modules and "torch" in sys.modules
    # napari's first-layer costs paid too: the lazily imported scipy.ndimage, pint's registry parsed
    import pint

    assert "scipy.ndimage" in sys.modules
    assert type(pint.get_application_registry().get()).__name__ != "LazyRegistry"
    # a layer added and removed after the freeze is collected: napari's clean-up still frees it at once
    layer = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="after")
    gone = weakref.ref(layer)
    del layer
    t0 = time.perf_counter()
    viewer.layers.clear()
    gc.collect()
    took = time.perf_counter() - t0
    assert gone() is None
    t0 = time.perf_counter()
    gc.collect()
    assert time.perf_counter() - t0 < 0.1  # frozen objects are skipped; with them, ~0.2-0.5 s here
    assert took < 5


def test_no_freeze_while_a_viewer_holds_a_layer(make_napari_viewer, qtbot, fresh_warmup):
    from hlip_napari._reading import reading

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="opened first")
    reading(viewer)
    _wait(qtbot, _warmup.done)
    assert not _warmup._state["frozen"] and "opened before" in _warmup._state["skipped"]
    assert gc.get_freeze_count() == 0


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("HLIP_NAPARI_GC_FREEZE", "0")
    assert not _warmup.enabled() and _warmup.done()


def test_pints_registry_is_built_aside_and_installed_only_where_nobody_used_pints_own(monkeypatch):
    """pint builds its application registry lazily *in place*; the warm-up thread builds one aside instead and
    the Qt thread installs it, unless pint's own was used meanwhile (units of two registries do not mix)."""
    import threading

    import pint
    from pint.registry import LazyRegistry

    before = pint.get_application_registry().get()
    try:
        # the Qt thread uses pint while the warm-up thread builds: each gets a whole registry
        pint.set_application_registry(LazyRegistry())
        monkeypatch.setitem(_warmup._state, "units", None)
        worker = threading.Thread(target=_warmup._build_units)
        worker.start()
        ours = pint.Quantity("1 pixel")  # napari's scale bar's first use, on the Qt thread
        worker.join()
        aside = _warmup._state["units"]
        assert isinstance(aside, pint.UnitRegistry) and aside is not pint.get_application_registry().get()
        assert _warmup.install_units()  # pint's own was used: it stays
        assert pint.get_application_registry().get() is not aside
        assert (ours * pint.Quantity("2 pixel")).to("pixel**2").magnitude == 2
        # nobody used pint's own yet: the registry built aside is installed, and napari's units come from it
        pint.set_application_registry(LazyRegistry())
        assert _warmup.install_units() and pint.get_application_registry().get() is aside
        assert pint.Quantity("1 pixel")._REGISTRY is aside
        monkeypatch.setitem(_warmup._state, "units", None)  # not built (yet): not ready, nothing installed
        pint.set_application_registry(LazyRegistry())
        assert not _warmup.install_units()
        assert type(pint.get_application_registry().get()) is LazyRegistry
    finally:
        pint.set_application_registry(before)
