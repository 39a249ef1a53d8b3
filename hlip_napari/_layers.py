"""Scans and relevance maps as napari layer data, placed in patient space.

Why reorient: napari slices a layer along its *data* axes, so a sagittal scan given a permuting
affine would be cut in its own plane while drawn in the axial one (napari warns "non-orthogonal
slicing"). We therefore flip/transpose each scan's voxels (a view, no copy) until its axes run along
the world axes (S, P, L) = LPS reversed, and hand napari the matching affine. A voxel keeps its
patient position exactly; only the array order changes. Oblique scans keep their small residual
rotation (exact in 3-D, the nearest plane in 2-D, as napari does).

World axes: 0 = z (inferior -> superior), 1 = y (anterior -> posterior), 2 = x (right -> left), so the
default 2-D view is axial in radiological convention (patient's left on screen right, anterior up).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hlip_engine import windows
from hlip_engine.recipes.orientation import VoxelView, reorient_view
from hlip_engine.study import Scan, Study
from hlip_engine.windows import (  # noqa: F401 - the browser's window box takes them from here
    MR_PERCENTILES,
    auto_limits,
    value_range,
    window_limits,
    window_presets,
)

AXIS_LABELS = ("I-S", "A-P", "R-L")
STUDY_KEY = "hlip_study"  # layer.metadata key holding the Study a scan layer came from
SCAN_KEY = "hlip_scan"  # layer.metadata key holding the scan's index in Study.scans
KIND_KEY = "hlip_kind"  # "scan" or "relevance"
WINDOW_KEY = "hlip_window"  # layer.metadata key: the CT preset name shown, or None for MR percentiles
MR_AUTO_TEXT = "auto (0.5-99.5 %)"
LOG = logging.getLogger("hlip_napari")
OBLIQUE_NOTE = ("oblique scan: the 2-D view shows the nearest plane (napari leaves the few degrees of tilt out of "
                "the slice); every voxel keeps its exact patient position, and the 3-D view shows the tilt")
UNITS = ("mm", "mm", "mm")  # the affines are in mm: napari's scale bar and rulers then read mm


# --- geometry --------------------------------------------------------------------------------------
def layer_view(scan: Scan) -> tuple[VoxelView, np.ndarray]:
    """(view, affine): the scan's voxels re-indexed to run along world (z, y, x) = (S, P, L), which is
    ITK's "LPS", by the engine's :func:`reorient_view` (a numpy view, no copy), and the 4x4 affine from
    that view's indices to world mm."""
    view = reorient_view(scan.direction, "LPS")
    return view, scan.affine_zyx @ view.index_affine(scan.shape)


# --- contrast --------------------------------------------------------------------------------------
def default_ct_window(scan: Scan, study: Study | None = None) -> str:
    """The window a radiologist opens this CT in, by the study's body part (:mod:`hlip_engine.windows`,
    the reading ``recipe_for`` uses): Brain for heads, Lung / Mediastinum for chests."""
    return windows.default_ct_window(study if study is not None else Study(uid="", scans=[scan]), scan)


def default_limits(scan: Scan, study: Study | None = None) -> tuple[tuple[float, float], str | None]:
    """(contrast limits, CT preset name or None for MR percentiles) for a scan."""
    if (scan.modality or "").upper() == "CT":
        name = default_ct_window(scan, study)
        return window_limits(name), name
    return auto_limits(scan.voxels), None


def contrast_text(window: str | None) -> str:
    """How a layer's contrast was chosen, in words (layer metadata "contrast")."""
    return f"CT {window}" if window else MR_AUTO_TEXT


# --- layers ----------------------------------------------------------------------------------------
def study_date(study: Study) -> str:
    d = study.date or ""
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if len(d) == 8 and d.isdigit() else d


def study_label(study: Study) -> str:
    """A short label that says whose a layer is: the study's date and modality (its UID's tail when undated)."""
    when = study_date(study) or (f"…{study.uid[-6:]}" if study.uid else "study")
    return f"{when} {study.modality}".strip()


def patient_age(study: Study) -> str:
    """Age at the study ("67 y", "8 mo") from the birth date; "" when either date is unknown."""
    born, seen = study.patient.birth_date or "", study.date or ""
    if not (len(born) == 8 and born.isdigit() and len(seen) == 8 and seen.isdigit()):
        return ""
    by, bm, bd, sy, sm, sd = int(born[:4]), int(born[4:6]), int(born[6:]), int(seen[:4]), int(seen[4:6]), int(seen[6:])
    months = (sy - by) * 12 + (sm - bm) - (1 if sd < bd else 0)
    if months < 0:
        return ""
    return f"{months // 12} y" if months >= 24 else f"{months} mo"


def study_header(study: Study, identifiers: bool = False) -> str:
    """The study line a reader checks before reading: description, date, age, sex, modality, scans.

    Identifiers (name, patient ID) only when asked for: screenshots and screen shares stay de-identified."""
    parts = [study.description or "Study", study_date(study) or "date unknown", study.modality or "?"]
    age, sex = patient_age(study), (study.patient.sex or "").upper()
    parts.append(" ".join(x for x in (age, {"M": "male", "F": "female", "O": "other"}.get(sex, sex)) if x)
                 or "age/sex unknown")
    line = "  ·  ".join(parts)
    if identifiers:
        line += f"\n{study.patient.name or '(no name)'}  ·  ID {study.patient.id or '?'}  ·  UID {study.uid}"
    return line


def scan_warnings(scan: Scan) -> list[str]:
    """What the loader had to do to this scan (filled slices, resampled tilt, cut gaps), as it recorded it."""
    return [str(w) for w in scan.attributes.get("warnings", []) or []]


def scan_name(scan: Scan, index: int) -> str:
    number = f"{scan.series_number}" if scan.series_number is not None else f"#{index + 1}"
    return f"{number} {scan.description or scan.modality or 'scan'}".strip()


def _plain(value: Any) -> Any:
    """Metadata a person can read (and napari can show) without holding numpy objects."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def scan_layer_data(study: Study, index: int, *, visible: bool = True, prefix: str | None = None) -> tuple:
    """One scan as a napari ``(data, kwargs, "image")`` tuple, placed in patient space.

    The name starts with the study's label (``prefix`` overrides it) so no layer is anonymous."""
    scan = study.scans[index]
    view, affine = layer_view(scan)
    limits, window = default_limits(scan, study)
    metadata = {
        STUDY_KEY: study,
        SCAN_KEY: index,
        KIND_KEY: "scan",
        "study_uid": study.uid,
        "study_description": study.description,
        "study_date": study.date,
        "series_number": scan.series_number,
        "series_description": scan.description,
        "series_uid": scan.series_uid,
        "modality": scan.modality,
        "orientation": scan.orientation,
        "spacing_mm": tuple(round(s, 4) for s in scan.spacing),
        "shape": scan.shape,
        "source": scan.source,
        "study_label": study_label(study),
        "warnings": scan_warnings(scan),
        "contrast": contrast_text(window),
        WINDOW_KEY: window,
        "value_range": value_range(scan.voxels),
        "attributes": {k: _plain(v) for k, v in scan.attributes.items()},
    }
    lin = affine[:3, :3]
    if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6):
        metadata["note"] = OBLIQUE_NOTE
        LOG.info("%s: %s", scan_name(scan, index), OBLIQUE_NOTE)
    kwargs = {
        "name": f"{study_label(study) if prefix is None else prefix} · {scan_name(scan, index)}",
        "affine": affine,
        "contrast_limits": limits,
        "colormap": "gray",
        "metadata": metadata,
        "visible": visible,
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        "interpolation2d": "linear",
    }
    return (view.apply(scan.voxels), kwargs, "image")


def study_layer_data(study: Study, prefix: str | None = None) -> list[tuple]:
    """All scans of a study; only the first is visible, since every scan fills the same patient space.

    Last scan first: napari lists the last layer added at the top, so its layer list then reads top-down in
    the study's series order, and the first scan (the one shown) comes in last, which napari makes the active
    layer itself (its controls are the ones on screen; no second selection change and repaint)."""
    return [scan_layer_data(study, i, visible=(i == 0), prefix=prefix) for i in reversed(range(len(study.scans)))]


def relevance_colormap():
    """Transparent at zero, then dark red -> yellow: only what the model looks at is coloured."""
    from napari.utils.colormaps import Colormap

    colors = np.array([[0.0, 0.0, 0.0, 0.0], [0.55, 0.0, 0.0, 1.0], [1.0, 0.45, 0.0, 1.0], [1.0, 1.0, 0.3, 1.0]])
    return Colormap(colors=colors, controls=[0.0, 0.33, 0.66, 1.0], name="hlip relevance")


def relevance_layer_data(study: Study, index: int, volume: np.ndarray, prompt: str, *,
                         threshold: float = 0.2, opacity: float = 0.6, colormap=None) -> tuple:
    """A relevance map (shaped like the scan's voxels, values in [0, 1]) over the scan it explains."""
    scan = study.scans[index]
    if tuple(volume.shape) != scan.shape:
        raise ValueError(f"relevance for scan {scan_name(scan, index)} has shape {volume.shape}, "
                         f"expected the scan's {scan.shape}")
    view, affine = layer_view(scan)
    kwargs = {
        # the prompt first: the layer list cuts long names, and an overlay must not look like a scan there
        "name": f"{prompt} (relevance) · {scan_name(scan, index)} · {study_label(study)}",
        "affine": affine,
        "contrast_limits": (threshold, 1.0),
        "colormap": colormap if colormap is not None else relevance_colormap(),
        "opacity": opacity,
        "blending": "translucent",
        "metadata": {STUDY_KEY: study, SCAN_KEY: index, KIND_KEY: "relevance", "prompt": prompt,
                     "study_uid": study.uid, "series_uid": scan.series_uid, "study_label": study_label(study)},
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        "interpolation2d": "linear",
    }
    return (view.apply(np.asarray(volume, dtype=np.float32)), kwargs, "image")


def study_of(layer) -> Study | None:
    study = (getattr(layer, "metadata", None) or {}).get(STUDY_KEY)
    return study if isinstance(study, Study) else None


def loader_notes(study: Study) -> list[str]:
    """One line per scan the loader changed: "2 HEAD AX: 1 missing slice(s) filled by linear interpolation"."""
    return [f"{scan_name(scan, i)}: {w}" for i, scan in enumerate(study.scans) for w in scan_warnings(scan)]


def announce_study(study: Study, others=()) -> None:
    """The notifications a study opens with: what the loader filled, resampled or cut, and the other
    studies of a folder that holds several."""
    from napari.utils.notifications import show_info, show_warning

    notes = loader_notes(study)
    if notes:
        show_warning(f"{study_label(study)} {study.description}: the loader changed {len(notes)} scan(s); "
                     "check before reading:\n" + "\n".join(notes))
    if others:
        show_info(f"This folder holds {len(others) + 1} studies; showing {study_label(study)} "
                  f"({study.description or study.uid}). Open the others one at a time: "
                  + "; ".join(f"{study_label(s)} {s.description} ({s.source})" for s in others))
