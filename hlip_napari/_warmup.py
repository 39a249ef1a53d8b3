"""The engine's modules imported while napari is idle after start-up; then the garbage collector is told
that what exists by then stays.

Each layer napari removes costs a full garbage collection (its scene-graph clean-up calls ``gc.collect()``
so that the layer's GL objects go at once), and once torch and transformers are imported a full collection
traverses 400,000-600,000 objects: 0.3-0.5 s of frozen viewer on a 2-core machine whenever a study closes, and as
long again whenever allocation triggers an automatic full collection (reading a study does). Python's
``gc.freeze()`` moves every object tracked so far into a permanent generation that collections skip (the
``gc`` docs: "after the imports at start-up"). Everything made later (layers, their GL visuals, studies,
results) is collected as before, so napari's clean-up still frees a removed layer's GL objects at once.

The freeze is done once, on the Qt thread, after a collection of what was garbage then, and only while no
viewer holds a layer (a layer frozen and later removed would never be collected, nor its voxels). A study
opened before the imports finish means no freeze: the viewer works as before, only collections cost more.
A client install (no torch) imports what it has. ``HLIP_NAPARI_GC_FREEZE=0`` turns it off.

Before the freeze, napari's own first-layer costs are paid too, or the first study opened pays them on the Qt
thread (0.5 s here, measured: ``bench/gui_latency.py``): ``scipy.ndimage`` (napari imports it lazily for a
layer's first thumbnail) and pint's unit registry (parsed on first use: a layer's units; built aside and
installed on the Qt thread: :func:`_build_units`) on the thread, and on
the Qt thread a throwaway layer model with the plugin's settings (pydantic's validators, the dims machinery; no
viewer, nothing on screen: ~40 ms).
"""
from __future__ import annotations

import gc
import importlib
import os
import threading

# what loading a model first imports (torch, transformers' model machinery: ~1,500 modules; the model
# itself then adds ~12,000 objects; measured with sys.modules before and after load_model), and
# scipy.ndimage, which napari imports for a layer's first thumbnail
ENGINE_MODULES = ("scipy.ndimage", "torch", "transformers", "transformers.modeling_utils",
                  "transformers.models.bert.modeling_bert", "transformers.models.auto.tokenization_auto",
                  "safetensors.torch", "hlip_engine.model", "hlip_engine.relevance", "hlip_engine.search",
                  "hlip_engine.zeroshot")
POLL_MS = 200

_state = {"started": False, "imported": threading.Event(), "frozen": False, "skipped": ""}


def enabled() -> bool:
    return os.environ.get("HLIP_NAPARI_GC_FREEZE", "1").strip().lower() not in ("0", "false", "no", "off")


def _build_units() -> None:
    """pint's unit registry (0.3 s of parsing) built aside, on the warm-up thread; :func:`install_units` makes
    it pint's application registry on the Qt thread. Not pint's own lazy one built here: pint builds that in
    place (its class changed first, then its definitions parsed), so the Qt thread using it meanwhile (napari's
    scale bar, a layer's units) found a half-built registry ("'pixel' is not defined in the unit registry",
    seen in CI)."""
    try:
        import pint

        _state["units"] = pint.UnitRegistry(on_redefinition="raise")  # as pint builds its default one
    except Exception:  # noqa: BLE001 - a warm-up only: napari then builds pint's own on first use
        _state["units"] = None


def install_units() -> bool:
    """On the Qt thread (where napari uses pint): the registry built aside becomes pint's application registry,
    unless pint's own was used already (then it stays: units of two registries do not mix). Whether pint's
    application registry is ready, so that using it costs no parsing."""
    import pint
    from pint.registry import LazyRegistry

    if type(pint.get_application_registry().get()) is not LazyRegistry:  # built (type() reads no attribute)
        return True
    units = _state.get("units")
    if units is None:
        return False
    pint.set_application_registry(units)
    return True


def units_ready() -> bool:
    """Whether napari can use units now without parsing pint's registry on the Qt thread (or no warm-up runs)."""
    return not enabled() or not _state["started"] or install_units()


def _import_engine() -> None:
    _build_units()  # first, long before a study can be opened
    for name in ENGINE_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a client install has no torch: the rest still helps
            continue
    _state["imported"].set()


def viewers_hold_layers() -> bool:
    """Whether any viewer the plugin reads in (the main one, the 3-up planes) holds a layer."""
    from ._reading import _READINGS

    return any(v is not None and len(v.layers) for v in (ref() for ref, _reading in list(_READINGS.values())))


def warm_napari() -> None:
    """A throwaway viewer model (no Qt, nothing on screen) given a scan and an overlay layer as the plugin
    makes them, then dropped: napari's first-layer costs are paid now, not by the first study opened."""
    import numpy as np
    from napari.components import ViewerModel

    from ._layers import AXIS_LABELS, UNITS, relevance_colormap

    model = ViewerModel()
    affine = np.diag([1.0, 0.5, 0.5, 1.0])
    common = dict(affine=affine, axis_labels=AXIS_LABELS, units=UNITS, interpolation2d="linear")
    model.add_image(np.zeros((2, 4, 4), np.float32), contrast_limits=(0.0, 1.0), colormap="gray", **common)
    model.add_image(np.zeros((2, 4, 4), np.float32), contrast_limits=(0.2, 1.0), colormap=relevance_colormap(),
                    opacity=0.6, blending="translucent", **common)
    model.layers.clear()


def freeze_now() -> bool:
    """Collect, then freeze what is tracked, if no viewer holds a layer; whether it froze."""
    if _state["frozen"]:
        return True
    if viewers_hold_layers():
        _state["skipped"] = "a study was opened before the engine's modules were imported"
        return False
    gc.collect()
    gc.freeze()
    _state["frozen"] = True
    return True


def start() -> None:
    """Once per session: import the engine's modules on a thread, then (Qt thread) freeze."""
    if _state["started"] or not enabled():
        return
    _state["started"] = True
    from qtpy.QtCore import QTimer

    threading.Thread(target=_import_engine, name="hlip-warm-up", daemon=True).start()

    def poll():
        install_units()  # as soon as it is built: a study opened early finds it
        if not _state["imported"].is_set():
            QTimer.singleShot(POLL_MS, poll)
            return
        try:
            if not viewers_hold_layers():
                warm_napari()
        except Exception:  # noqa: BLE001 - a warm-up only: the first study then pays napari's first-layer costs
            pass
        freeze_now()

    QTimer.singleShot(POLL_MS, poll)


def done() -> bool:
    """The warm-up has finished (frozen, or skipped because a study came first)."""
    return _state["frozen"] or bool(_state["skipped"]) or not enabled()
