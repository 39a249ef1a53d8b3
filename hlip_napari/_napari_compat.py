"""What the plugin needs from napari that napari has no public API for, in one place, guarded by version.

Each item names the napari issue that asks for a public route; ``tests/napari/test_napari_compat.py`` fails
loudly when a napari release changes what an item relies on (never a silent fallback).

- :func:`wheel_slice_callbacks`: napari's own viewer wheel callback (Ctrl+wheel steps the slider). The PACS
  mouse mode takes the wheel over (wheel = next image, Ctrl+wheel = zoom) and puts napari's back when it is
  switched off. napari exposes ``viewer.mouse_wheel_callbacks`` (public) but not which entry is its own, so
  the entry is found by its function name, without importing napari's private module.
"""
from __future__ import annotations

from importlib.metadata import version

NAPARI_TESTED = ("0.9.0", "0.9.2")  # the lowest and highest napari the plugin's tests run on (0.9 made viewer.canvas public)
WHEEL_SLICE_CALLBACK = "dims_scroll"  # napari's viewer wheel callback, by name (napari 0.4.19 - 0.9.x)


def napari_version() -> tuple[int, ...]:
    parts = []
    for piece in version("napari").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def wheel_slice_callbacks(viewer) -> list:
    """napari's own wheel callbacks of ``viewer`` that step the slider (found by name, see above)."""
    return [cb for cb in viewer.mouse_wheel_callbacks if getattr(cb, "__name__", "") == WHEEL_SLICE_CALLBACK]
