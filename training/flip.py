"""Report-consistent left/right flip augmentation (``--flip-lr P``), off by default.

With probability P a training study is mirrored along the patient's left-right axis, every scan of it,
and the side words of its report are swapped ("left" <-> "right"), so image and text still agree.

Which tensor axis is left-right (the cached [D, H, W] scans):
- brain MRI / head CT (ours and the official cache): each scan is reoriented to RPI, then the
  largest-spacing axis is put first (hlip_engine.recipes.orientation). Left-right is the column axis W
  of axial and coronal scans, and the depth axis D of a sagittal scan (slices stacked left to right);
  a 3-D isotropic sagittal scan keeps its axial order (ties keep the first axis), so W again.
  ``training.prepare`` records the exact axis per series as ``"lr_axis"``; official manifests only
  name the ``"view"``, so a series without ``lr_axis`` uses D for "sagittal" and W otherwise. (That
  guess is wrong for an isotropic 3-D sagittal series in an official cache, whose depth stayed S-I; caches
  made by ``training.prepare`` carry the exact axis, so use them, or add ``lr_axis`` to the manifest.)
- CT-RATE (official cache): ``sitk.GetArrayFromImage`` of the axial NIfTI, (z, y, x): W.
"""
from __future__ import annotations

import re

import torch

AXIS_D, AXIS_W = 0, 2

_SWAP = {"left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward",
         "leftwards": "rightwards", "rightwards": "leftwards"}
# whole words, any case ("left-sided": the hyphen ends the word); single upper-case L / R standing alone
# ("R MCA", "L > R"), but not "L4", "L5-S1", "T2R" (a digit or letter next to it joins the word) or "R/O"
_WORDS = re.compile(r"\b(leftwards?|rightwards?|left|right)\b|(?<![\w.])([LR])(?![\w]|/[Oo])", re.IGNORECASE)


def _case_like(word: str, model: str) -> str:
    if model.isupper() and len(model) > 1:
        return word.upper()
    if model[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_sides(text: str) -> str:
    """Swap left and right in a report: Left -> Right, LEFT -> RIGHT, left-sided -> right-sided, L -> R."""
    def repl(m: re.Match) -> str:
        word, letter = m.group(1), m.group(2)
        if letter is not None:
            if not letter.isupper():  # a lone lower-case l / r is not a side
                return letter
            return "R" if letter == "L" else "L"
        return _case_like(_SWAP[word.lower()], word)

    return _WORDS.sub(repl, text)


def lr_axis(series_info: dict | None, *, raw_hu: bool = False) -> int:
    """The left-right axis of a cached [D, H, W] scan from its manifest entry (see the module docstring)."""
    if raw_hu or not isinstance(series_info, dict):
        return AXIS_W
    if "lr_axis" in series_info:
        axis = int(series_info["lr_axis"])
        if axis not in (0, 1, 2):
            raise ValueError(f"lr_axis must be 0, 1 or 2, got {series_info['lr_axis']!r}")
        return axis
    return AXIS_D if str(series_info.get("view", "")).lower() == "sagittal" else AXIS_W


def flip_scan(scan: torch.Tensor, axis: int) -> torch.Tensor:
    """Mirror a [..., D, H, W] scan along its spatial ``axis`` (0 = D, 1 = H, 2 = W)."""
    return torch.flip(scan, dims=(scan.ndim - 3 + axis,))


def lr_axis_of_view(direction, view_axes) -> int:
    """For ``training.prepare``: which model axis is the patient's left-right.

    direction: the scan's 3x3 LPS direction (columns: column, row, slice axes); view_axes: the
    VoxelView transpose order that made the model scan (model axis k <- source numpy axis view_axes[k]).
    Source numpy axis n is ITK axis 2 - n, whose direction column is 2 - n; L-R is the first LPS row.
    """
    import numpy as np

    d = np.abs(np.asarray(direction, dtype=float))
    source = int(np.argmax([d[0, 2 - n] for n in range(3)]))
    return list(view_axes).index(source)
