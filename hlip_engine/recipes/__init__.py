"""HLIP's preprocessing recipes, as named data.

A recipe says which scans it accepts, how intensities become [0, 1] and how the voxel grid becomes the
model grid; its ``defaults`` are the options a caller may override (``preprocess(study, "brain-mri",
slices=16, size=40, crop=32)`` for a tiny test model). The steps themselves live in
:mod:`hlip_engine.preprocessing`; the values here are the paper's (arXiv 2505.21862) and its official code's.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..windows import head_ct_windows
from .orientation import check_orientation

# ImageNet channel statistics averaged over RGB: HLIP feeds one grey channel to MAE-initialised ViTs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class Recipe:
    """One named preprocessing recipe.

    modalities: DICOM Modality values accepted ("" = unknown, e.g. NIfTI, always accepted).
    intensity : "percentile" (clip to percentiles, min-max; MR), "window" (one HU window; chest CT) or
                "windows" (one model scan per HU window; head CT).
    grid      : "square-resize" (pad in-plane to square, bilinear to ``size``, depth to ``slices`` by
                nearest-exact, centre-crop ``crop``: the brain pipeline) or "resample-crop" (trilinear to
                ``spacing`` mm, then pad / centre-crop to ``slices`` x ``crop`` x ``crop``: CT-RATE).
    defaults  : the overridable options; ``orient`` None keeps the stored orientation.
    """

    name: str
    about: str
    modalities: tuple[str, ...]
    intensity: str
    grid: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def options(self, **overrides) -> dict[str, Any]:
        """The defaults with ``overrides`` applied and checked; JSON-friendly values."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ValueError(f"recipe {self.name!r} has no option(s) {unknown}; "
                             f"its options are {sorted(self.defaults)}")
        opts = {**self.defaults, **overrides}
        for key in ("slices", "size", "crop"):
            if key in opts:
                value = opts[key]
                if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != int(value) \
                        or value < 1:
                    raise ValueError(f"recipe {self.name!r}: option {key} must be a positive integer, "
                                     f"got {value!r}")
                opts[key] = int(value)
        if self.grid == "square-resize" and opts["crop"] > opts["size"]:
            raise ValueError(f"recipe {self.name!r}: crop {opts['crop']} is larger than size {opts['size']}")
        if opts.get("orient"):
            opts["orient"] = check_orientation(opts["orient"])
        if opts.get("depth_axis") not in (None, "largest-spacing"):
            raise ValueError(f"recipe {self.name!r}: depth_axis must be 'largest-spacing' or None, "
                             f"got {opts['depth_axis']!r}")
        if "percentiles" in opts:
            low, high = (float(x) for x in opts["percentiles"])
            if not 0 <= low < high <= 100:
                raise ValueError(f"recipe {self.name!r}: percentiles must satisfy 0 <= low < high <= 100, "
                                 f"got {opts['percentiles']!r}")
            opts["percentiles"] = [low, high]
        if "window" in opts:
            opts["window"] = _low_high("window", opts["window"], self.name)
        if "windows" in opts:
            opts["windows"] = _windows(opts["windows"], self.name)
        if "spacing" in opts:
            spacing = [float(x) for x in opts["spacing"]]
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(f"recipe {self.name!r}: spacing must be three positive mm values "
                                 f"(slice, row, column), got {opts['spacing']!r}")
            opts["spacing"] = spacing
        return opts


def _low_high(what: str, value, recipe: str) -> list[float]:
    """A window as [low, high] HU from (low, high) or {"width", "level"}."""
    if isinstance(value, Mapping):
        width, level = float(value["width"]), float(value["level"])
        low, high = level - width / 2, level + width / 2
    else:
        low, high = (float(x) for x in value)
    if not high > low:
        raise ValueError(f"recipe {recipe!r}: {what} must have high > low, got {value!r}")
    return [low, high]


def _windows(value, recipe: str) -> dict[str, list[float]]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"recipe {recipe!r}: windows must be a non-empty mapping name -> "
                         f"{{'width', 'level'}} or [low, high], got {value!r}")
    return {str(name): _low_high(f"window {name!r}", w, recipe) for name, w in value.items()}


_BRAIN_GRID = {"orient": "RPI", "depth_axis": "largest-spacing", "slices": 48, "size": 256, "crop": 224}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="brain-mri",
            about="HLIP brain MRI (BrainMRI220K, Pub-Brain-5): RPI, largest spacing as depth, 0.5/99.5 "
                  "percentile clip + min-max, square pad, bilinear 256, nearest-exact depth, crop 224. "
                  "slices=144 is the paper's test-time setting.",
            modalities=("MR",),
            intensity="percentile",
            grid="square-resize",
            defaults={**_BRAIN_GRID, "percentiles": (0.5, 99.5)},
        ),
        Recipe(
            name="chest-ct",
            about="HLIP chest CT (CT-RATE, Rad-ChestCT): trilinear to 3 x 1 x 1 mm, window [-1150, 350] HU "
                  "-> [0, 1], pad / centre-crop 112 x 336 x 336. Stored orientation is kept, as in CT-RATE.",
            modalities=("CT",),
            intensity="window",
            grid="resample-crop",
            defaults={"orient": None, "spacing": (3.0, 1.0, 1.0), "window": (-1150.0, 350.0),
                      "slices": 112, "crop": 336},
        ),
        Recipe(
            name="head-ct",
            about="HLIP head CT (HeadCT240K, CQ500, RSNA): each series as one model scan per HU window "
                  "(blood, brain, bone by default), on the brain grid 48 x 224 x 224.",
            modalities=("CT",),
            intensity="windows",
            grid="square-resize",
            defaults={**_BRAIN_GRID, "windows": head_ct_windows()},
        ),
    )
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown preprocessing recipe {recipe!r}; known: {sorted(RECIPES)}") from None
