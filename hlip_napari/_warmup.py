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
"""
from __future__ import annotations

import gc
import importlib
import os
import threading

# what loading a model first imports (torch, transformers' model machinery: ~1,500 modules; the model
# itself then adds ~12,000 objects); measured with sys.modules before and after load_model
ENGINE_MODULES = ("torch", "transformers", "transformers.modeling_utils", "transformers.models.bert.modeling_bert",
                  "transformers.models.auto.tokenization_auto", "safetensors.torch", "hlip_engine.model",
                  "hlip_engine.relevance", "hlip_engine.search", "hlip_engine.zeroshot")
POLL_MS = 200

_state = {"started": False, "imported": threading.Event(), "frozen": False, "skipped": ""}


def enabled() -> bool:
    return os.environ.get("HLIP_NAPARI_GC_FREEZE", "1").strip().lower() not in ("0", "false", "no", "off")


def _import_engine() -> None:
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
        if not _state["imported"].is_set():
            QTimer.singleShot(POLL_MS, poll)
            return
        freeze_now()

    QTimer.singleShot(POLL_MS, poll)


def done() -> bool:
    """The warm-up has finished (frozen, or skipped because a study came first)."""
    return _state["frozen"] or bool(_state["skipped"]) or not enabled()
