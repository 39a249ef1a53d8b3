"""CT windows and the body-part reading of a study: one rule for the model's recipe and the viewer's window.

``body_part(study)`` reads BodyPartExamined, then the descriptions, then (for CT) the field of view, and
both ``preprocessing.recipe_for`` (head-ct / chest-ct) and the napari viewer's opening window
(``default_ct_window``: Brain for heads, Lung / Mediastinum for chests) go by it, so a study never gets
one reading for the model and another on screen. Presets are data (``data/window_presets.json``).
Torch-free: numpy only, so the GUI imports it at start-up.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

PRESETS = Path(__file__).resolve().parent / "data" / "window_presets.json"
MR_PERCENTILES = (0.5, 99.5)  # the paper's MR clipping, a good auto-contrast too
HEAD_FOV_MM = 300.0  # a head fits in 300 mm in-plane, a chest does not

_HEAD = re.compile(r"head|brain|skull|cran|neuro|cerebr|stroke|\bcow\b")
_CHEST = re.compile(r"chest|thora|lung|pulmo|\bcta? pe\b|mediast")
_ABDOMEN = re.compile(r"abd|pelvi|liver")


# --- presets ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(PRESETS.read_text())


def window_presets() -> dict[str, dict[str, float]]:
    """CT window presets (width, level in HU) named as radiologists name them."""
    return {k: dict(v) for k, v in _table()["CT"].items() if not k.startswith("_")}


def head_ct_windows() -> dict[str, dict[str, float]]:
    """The blood / brain / bone windows the head-CT recipe turns each series into (width, level in HU)."""
    return {k: {"width": float(v["width"]), "level": float(v["level"])}
            for k, v in _table()["head_ct_model_windows"].items() if not k.startswith("_")}


def window_limits(name: str) -> tuple[float, float]:
    """(low, high) HU of a named CT preset: level -/+ width / 2."""
    presets = window_presets()
    if name not in presets:
        raise ValueError(f"unknown CT window {name!r}; known: {', '.join(presets)}")
    p = presets[name]
    return (p["level"] - p["width"] / 2.0, p["level"] + p["width"] / 2.0)


# --- MR (no absolute units): percentiles ---------------------------------------------------------------
def _sample(voxels: np.ndarray, n: int = 200_000) -> np.ndarray:
    """A strided subsample: percentiles of a 300-slice series in milliseconds, not seconds."""
    step = max(1, int(round((voxels.size / n) ** (1 / 3))))
    return np.asarray(voxels[::step, ::step, ::step], dtype=np.float32).ravel()


def auto_limits(voxels: np.ndarray, percentiles=MR_PERCENTILES) -> tuple[float, float]:
    """Percentile auto-contrast (MR has no absolute units)."""
    s = _sample(voxels)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(s, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return (float(lo), float(hi))


def value_range(voxels: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite voxels (subsampled), never an empty range."""
    s = _sample(voxels, 400_000)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (0.0, 1.0)
    lo, hi = float(s.min()), float(s.max())
    return (lo, hi if hi > lo else lo + 1.0)


# --- body part ----------------------------------------------------------------------------------------
def named_body_part(study) -> str | None:
    """"head", "chest" or "abdomen" as the study's words name it, else None.

    BodyPartExamined of its scans first, then the study's and scans' descriptions; head and chest count
    only when one of them is named alone (a "HEAD CHEST" study is left to the field of view).
    """
    parts = " ".join(str(s.attributes.get("BodyPartExamined", "")) for s in study.scans)
    words = " ".join([study.description, *(s.description for s in study.scans)])
    for text in (parts.lower(), words.lower()):
        head, chest = bool(_HEAD.search(text)), bool(_CHEST.search(text))
        if head != chest:
            return "head" if head else "chest"
    return "abdomen" if _ABDOMEN.search(f"{parts} {words}".lower()) else None


def field_of_view_mm(study) -> float:
    """The largest in-plane extent (mm) of the study's scans."""
    return max(max(s.shape[1] * s.spacing[1], s.shape[2] * s.spacing[2]) for s in study.scans)


def body_part(study) -> str:
    """"head", "chest" or "abdomen": :func:`named_body_part`, else head when the field of view is a head's."""
    named = named_body_part(study)
    if named in ("head", "chest"):
        return named
    if named is None or not study.scans:
        return "head" if study.scans and field_of_view_mm(study) <= HEAD_FOV_MM else "chest"
    return named


def ct_recipe(study) -> str:
    """The recipe of a CT study: head-ct or chest-ct (there is no abdomen recipe: the field of view chooses)."""
    named = named_body_part(study)
    if named in ("head", "chest"):
        return f"{named}-ct"
    return "head-ct" if field_of_view_mm(study) <= HEAD_FOV_MM else "chest-ct"


def default_ct_window(study, scan) -> str:
    """The preset a radiologist opens this CT scan in, from the study's body part (and a lung kernel)."""
    part = body_part(study)
    if part == "head":
        return "Brain"
    if part == "abdomen":
        return "Abdomen"
    words = " ".join(str(x) for x in (scan.description, scan.attributes.get("ConvolutionKernel", ""))).lower()
    return "Lung" if "lung" in words else "Mediastinum"
