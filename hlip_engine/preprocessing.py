"""A Study -> HLIP model input, numerically as the official pipeline does it, and the way back.

``preprocess(study, "brain-mri")`` returns a :class:`PreparedStudy`: ``.tensor`` [N, 1, D, H, W] float32
for ``encode_image`` (after adding the batch axis) and ``.to_scan(map, i)``, which lays a map on the model
grid (relevance on the token grid, a mask on the full grid) back onto model scan ``i``'s source voxels.

Order of operations (the official code's; the recipes are data in :mod:`hlip_engine.recipes`):
  square-resize (brain MRI, head CT): reorient (RPI) -> largest-spacing axis first -> intensity to [0, 1]
      -> pad in-plane to square -> bilinear to ``size`` -> nearest-exact depth to ``slices`` -> centre-crop
      ``crop`` -> (x - 0.449) / 0.226.
  resample-crop (chest CT): trilinear to ``spacing`` mm -> HU window to [0, 1] -> pad / centre-crop to
      ``slices`` x ``crop`` x ``crop`` -> same normalisation.
Scans loaded from HLIP ``.pt`` tensors (``attributes["hlip_tensor"]``) are already in the model's
orientation ("unit": also already clipped to [0, 1]), so those steps are skipped, as the official
inference code does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .recipes import IMAGENET_MEAN, IMAGENET_STD, RECIPES, Recipe, get_recipe
from .recipes.geometry import ScanGeometry, start_map
from .recipes.orientation import VoxelView, depth_first_order, reorient_view
from .study import Scan, Study
from .windows import ct_recipe

__all__ = ["PreparedStudy", "RECIPES", "Recipe", "preprocess", "recipe_for"]


@dataclass
class PreparedStudy:
    """Model input for one study plus, per model scan, how to get back to its source voxels."""

    tensor: torch.Tensor  # [N, 1, D, H, W] float32, normalised
    scan_indices: list[int]  # model scan i came from study.scans[scan_indices[i]] (head CT: 3 per series)
    recipe: str
    options: dict[str, Any]  # every option value used (JSON-friendly), to reproduce or store with a model
    labels: list[str] = field(default_factory=list)  # "T1 AX", "HEAD 5mm [bone]" ...
    geometry: list[ScanGeometry] = field(default_factory=list)
    study_uid: str = ""
    # per model scan, the grid axis (0 depth, 1 height, 2 width) that runs across the patient's left and right
    mirror_axes: list[int] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int, int]:
        """(D, H, W) of one model scan."""
        return tuple(int(x) for x in self.tensor.shape[-3:])

    def to_scan(self, grid_map, i: int) -> np.ndarray:
        """Map ``grid_map`` [D', H', W'] on model scan ``i``'s grid back onto its source scan's voxels.

        Any resolution covering the model grid works (token grid 6 x 14 x 14, full 48 x 224 x 224);
        interpolation is trilinear; voxels outside the crop get 0. Returns an array shaped like
        ``study.scans[scan_indices[i]].voxels``.
        """
        if not 0 <= i < len(self.geometry):
            raise IndexError(f"model scan {i} out of range: this study has {len(self.geometry)}")
        return self.geometry[i].to_scan(grid_map)

    def __repr__(self) -> str:
        return (f"PreparedStudy({self.study_uid!r}, {self.recipe}, tensor={tuple(self.tensor.shape)}, "
                f"scans={self.scan_indices})")


AUTO = "auto"  # a recipe name meaning: choose per study with recipe_for (e.g. a model for MR and head CT)
GRID_OPTIONS = ("slices", "size", "crop")  # the model's input grid, kept when another recipe is chosen


def model_recipe(preprocess_config: dict | None, recipe: str | None = None) -> tuple[str, dict]:
    """(recipe, options) that prepare studies for a model whose config holds ``preprocess_config``.

    ``preprocess_config`` is the model's ``{"recipe": name or "auto", "slices": ..., ...}``; ``recipe``
    overrides its recipe, keeping only the model's input grid (the other recipe's extras do not apply).
    """
    pre = dict(preprocess_config or {})
    default = pre.pop("recipe", None) or AUTO
    chosen = recipe or default
    if chosen != default:
        known = set(GRID_OPTIONS) if chosen == AUTO else set(get_recipe(chosen).defaults)
        pre = {k: v for k, v in pre.items() if k in GRID_OPTIONS and k in known}
    return chosen, pre


def preprocess(study: Study, recipe: str | Recipe | None = None, **options) -> PreparedStudy:
    """Every scan of ``study`` through ``recipe`` (default or "auto": :func:`recipe_for`); see the module docstring.

    options override the recipe's defaults, e.g. ``slices=144`` (the paper's test-time depth) or
    ``slices=16, size=40, crop=32`` for a tiny model. Raises ValueError naming the study and scan for
    an empty study, a scan of another modality, empty or non-finite voxels.
    """
    if recipe is None or recipe == AUTO:
        spec = get_recipe(recipe_for(study))
        # a model's input grid applies to whichever recipe the study gets; drop grid keys it lacks
        options = {k: v for k, v in options.items() if k in spec.defaults or k not in GRID_OPTIONS}
    else:
        spec = get_recipe(recipe)
    opts = spec.options(**options)
    name = study.uid or study.source or "study"
    if not study.scans:
        why = "; ".join(f"{item}: {reason}" for item, reason in study.skipped[:5])
        raise ValueError(f"study {name}: no scans to preprocess" + (f" (skipped: {why})" if why else ""))

    tensors, indices, labels, geometry = [], [], [], []
    for i, scan in enumerate(study.scans):
        _check_scan(scan, i, spec, name)
        for label, x, geo in _prepare_scan(scan, spec, opts):
            tensors.append(x)
            indices.append(i)
            labels.append(f"{scan.description or f'scan {i}'}{f' [{label}]' if label else ''}")
            geometry.append(geo)
    mirror = [left_right_axis(study.scans[k], geo) for k, geo in zip(indices, geometry)]
    return PreparedStudy(torch.stack(tensors), indices, spec.name, opts, labels, geometry, study.uid, mirror)


def left_right_axis(scan: Scan, geometry: ScanGeometry) -> int:
    """The model-grid axis (0 depth, 1 height, 2 width) of a model scan that runs most nearly along the
    patient's left-right (LPS x) axis: the axis a left-right mirror image flips."""
    a = np.asarray(scan.affine, dtype=np.float64)[:3, :3]  # columns: column, row, slice directions (x spacing)
    x_share = [abs(a[0, 2 - s]) / max(float(np.linalg.norm(a[:, 2 - s])), 1e-12) for s in range(3)]  # source
    return int(np.argmax([x_share[geometry.view.axes[k]] for k in range(3)]))  # axis s = slice, row, column


# --- one scan ---------------------------------------------------------------------------------------------
def _check_scan(scan: Scan, i: int, spec: Recipe, study: str) -> None:
    what = f"study {study}: scan {i} ({scan.description or scan.source or 'unnamed'})"
    modality = (scan.modality or "").upper()
    if modality and modality not in spec.modalities:
        raise ValueError(f"{what} is {modality}; recipe {spec.name!r} takes {'/'.join(spec.modalities)} scans")
    if scan.voxels.size == 0:
        raise ValueError(f"{what} has no voxels (shape {scan.shape})")
    if not np.isfinite(scan.voxels).all():
        raise ValueError(f"{what} has non-finite voxel values (NaN or inf)")


def _prepare_scan(scan: Scan, spec: Recipe, opts: dict) -> list[tuple[str, torch.Tensor, ScanGeometry]]:
    """-> [(window label, [1, D, H, W] normalised, geometry)]: one entry, or one per head-CT window."""
    stored = scan.attributes.get("hlip_tensor")  # None, "unit" or "hu" (see hlip_engine.io.tensors)
    view = VoxelView()
    spacing = np.asarray(scan.spacing)  # (slice, row, column) mm
    if opts.get("orient") and not stored:
        view = reorient_view(scan.direction, opts["orient"])
    spacing = spacing[list(view.axes)]
    if opts.get("depth_axis") == "largest-spacing" and not stored:
        order = depth_first_order(spacing)
        view, spacing = view.then_transpose(order), spacing[list(order)]
    voxels = view.apply(scan.voxels)  # a view: (depth, height, width)

    if spec.grid == "resample-crop":  # CT-RATE: resample in HU, then window, then pad / crop
        x, axes = _resample(voxels, spacing, opts["spacing"])
        x = _window(x, *opts["window"])
        x, axes = _pad_crop(x, axes, (opts["slices"], opts["crop"], opts["crop"]))
        return [("", _normalise(x), ScanGeometry(scan.shape, view, axes))]

    units = _unit_intensities(voxels, spec, opts, stored)
    out = []
    for label, x in units:
        x, axes = _square_resize(x, opts["size"], opts["slices"], opts["crop"])
        out.append((label, _normalise(x), ScanGeometry(scan.shape, view, axes)))
    return out


# --- intensity: pure functions ------------------------------------------------------------------------------
def clip_percentiles(voxels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to the [low, high] percentiles, then min-max to [0, 1] (+1e-8 in the denominator, as HLIP)."""
    lower, upper = np.percentile(voxels, [low, high])
    x = np.clip(voxels, lower, upper)
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


def _window(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """HU window [low, high] -> [0, 1], clipped."""
    return torch.clip((x - low) / (high - low), 0.0, 1.0)


def _unit_intensities(voxels, spec: Recipe, opts, stored) -> list[tuple[str, torch.Tensor]]:
    """-> [(label, [1, d, h, w] float32 in [0, 1])]."""
    if spec.intensity == "percentile":
        x = voxels if stored == "unit" else clip_percentiles(voxels, *opts["percentiles"])
        return [("", _tensor(x))]
    if spec.intensity == "windows":
        hu = _tensor(voxels)
        return [(name, _window(hu, low, high)) for name, (low, high) in opts["windows"].items()]
    raise ValueError(f"recipe {spec.name!r}: intensity {spec.intensity!r} needs grid 'resample-crop'")


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float()[None]  # [1, d, h, w]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.as_tensor(IMAGENET_MEAN).mean(), torch.as_tensor(IMAGENET_STD).mean()
    return (x - mean) / std


# --- grid -------------------------------------------------------------------------------------------------
def _square_resize(x: torch.Tensor, size: int, slices: int, crop: int):
    """[1, d, h, w] -> [1, slices, crop, crop]: the brain pipeline's grid steps, with their AxisMaps."""
    _, d, h, w = x.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = F.pad(x, (left, side - w - left, top, side - h - top), mode="constant", value=0)
    # bilinear treats slices as channels (in-plane only) and nearest-exact at unchanged in-plane size only
    # picks slices, so the two commute exactly: run the one that shrinks the data first.
    if slices < d:
        x = F.interpolate(x[None], size=(slices, side, side), mode="nearest-exact")[0]
    if side != size:  # same size: bilinear with align_corners=False is the identity
        x = F.interpolate(x, size=(size, size), mode="bilinear")
    if slices >= d:
        x = F.interpolate(x[None], size=(slices, size, size), mode="nearest-exact")[0]
    c0 = (size - crop) // 2
    x = x[:, :, c0:c0 + crop, c0:c0 + crop]
    axes = (start_map(d).resized(d, slices),
            start_map(h).shifted(top, side).resized(side, size).shifted(-c0, crop),
            start_map(w).shifted(left, side).resized(side, size).shifted(-c0, crop))
    return x, axes


def _resample(voxels: np.ndarray, spacing, target) -> tuple[torch.Tensor, list]:
    """Trilinear to ``target`` mm: size int(n * spacing / target) per axis, as CT-RATE's processing."""
    shape = voxels.shape
    size = tuple(int(n * s / t + 1e-9) for n, s, t in zip(shape, spacing, target))
    if min(size) < 1:
        raise ValueError(f"resampling {shape} voxels of {tuple(spacing)} mm to {tuple(target)} mm leaves "
                         f"an empty axis {size}")
    x = _tensor(voxels)
    if size != tuple(shape):
        x = F.interpolate(x[None], size=size, mode="trilinear")[0]
    return x, [start_map(n).resized(n, m) for n, m in zip(shape, size)]


def _pad_crop(x: torch.Tensor, axes, target) -> tuple[torch.Tensor, tuple]:
    """Zero-pad each axis up to ``target`` (centred), then centre-crop down to it."""
    pads, starts = [], []
    for n, t in zip(x.shape[1:], target):
        p = max(t - n, 0)
        pads.append((p // 2, p - p // 2))
        starts.append((n + p - t) // 2)
    (d1, d2), (h1, h2), (w1, w2) = pads
    x = F.pad(x[None], (w1, w2, h1, h2, d1, d2), mode="constant", value=0)[0]
    x = x[:, starts[0]:starts[0] + target[0], starts[1]:starts[1] + target[1], starts[2]:starts[2] + target[2]]
    axes = tuple(a.shifted(p1, a.n_model + p1 + p2).shifted(-s, t)
                 for a, (p1, p2), s, t in zip(axes, pads, starts, target))
    return x, axes


# --- which recipe -----------------------------------------------------------------------------------------
def recipe_for(study: Study) -> str:
    """A sensible default recipe from Modality and BodyPartExamined (then descriptions, then field of view).

    MR -> brain-mri; CT of the head -> head-ct; CT of the chest -> chest-ct. A CT whose body part is not
    named goes by its in-plane field of view (a head fits in 300 mm, a chest does not). The body-part
    reading is :mod:`hlip_engine.windows`', the one the viewer's opening window uses too.
    """
    mods = {(s.modality or s.attributes.get("modality_guess") or "").upper() for s in study.scans}
    mods = (mods - {""}) or ({study.modality.upper()} - {""})
    name = study.uid or study.source or "study"
    if mods == {"MR"}:
        return "brain-mri"
    if mods != {"CT"}:
        raise ValueError(f"study {name}: no default recipe for modalities {sorted(mods) or 'unknown'}; "
                         f"choose one of {sorted(RECIPES)}")
    return ct_recipe(study)
