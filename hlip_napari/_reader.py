"""napari reader: a clinical study (DICOM folder, DICOMDIR, NIfTI, HLIP tensor folder) -> one layer per scan.

``get_reader`` only looks (names, a few 132-byte headers); it never raises and returns ``None`` for
paths that are not studies, so napari can ask other readers. The loading itself is the engine's
:func:`hlip_engine.load_study`; placement and contrast come from :mod:`hlip_napari._layers`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ._layers import study_layer_data

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TENSOR_SUFFIXES = (".pt",)
MAX_PROBES = 40  # files looked at before giving up on a folder: cheap even on a network share
MAX_DEPTH = 4  # PACS exports nest patient/study/series/file
MAX_STUDIES = 8  # a DICOMDIR or archive folder with more studies is a library: use the search widget


def _is_dicom_file(path: str) -> bool:
    """The DICOM Part 10 signature: 128-byte preamble then b'DICM'."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _claims_file(name: str, path: str) -> bool:
    low = name.lower()
    if low == "dicomdir" or low.endswith(".dcm") or low.endswith(NIFTI_SUFFIXES) or low.endswith(TENSOR_SUFFIXES):
        return True
    return _is_dicom_file(path)


def _claims_folder(folder: str) -> bool:
    """Whether a folder looks like a study: a DICOMDIR, DICOM/NIfTI files or HLIP .pt tensors inside."""
    probes = 0
    stack = [(folder, 0)]
    while stack and probes < MAX_PROBES:
        current, depth = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if probes >= MAX_PROBES:
                break
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 < MAX_DEPTH and not entry.name.startswith("."):
                        stack.append((entry.path, depth + 1))
                    continue
                low = entry.name.lower()
                if low.endswith(TENSOR_SUFFIXES):
                    return True
                probes += 1
                if _claims_file(entry.name, entry.path):
                    return True
            except OSError:
                continue
    return False


def _study_path(path: str) -> str:
    """What to hand the engine: a DICOMDIR or single DICOM slice stands for its folder (the whole study)."""
    p = Path(path)
    if p.is_file() and p.name == "img.pt":  # BrainMRI220K layout: <study>/<scan>/img.pt
        return str(p.parent.parent)
    if p.is_file() and not p.name.lower().endswith(NIFTI_SUFFIXES):
        return str(p.parent)
    return str(p)


def get_reader(path):
    """napari's reader hook: a function that reads ``path``, or ``None`` when this is not a study."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        path = os.fspath(path)
        if os.path.isdir(path):
            return read_study if _claims_folder(path) else None
        if os.path.isfile(path):
            return read_study if _claims_file(os.path.basename(path), path) else None
        return None
    except Exception:  # noqa: BLE001 - a reader check must never raise
        return None


def load_studies(path: str) -> list:
    """One study (the usual case), or each study of a folder/DICOMDIR that holds a few."""
    from hlip_engine import StudyLoadError, discover, load_study

    target = _study_path(path)
    try:
        return [load_study(target)]
    except StudyLoadError:
        refs = discover(target)
        if len(refs) <= 1:
            raise
        if len(refs) > MAX_STUDIES:
            raise StudyLoadError(f"{target}: holds {len(refs)} studies; open one of them, or index the folder "
                                 "and use the Search studies widget") from None
        return [load_study(ref) for ref in refs]


def read_study(path) -> list[tuple]:
    """Load the study at ``path`` and return napari layer data: one image layer per scan.

    One patient on screen: a folder holding several studies gives the first (the others are named in a
    notification), and the study already in the viewer is closed when these layers arrive."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    studies = load_studies(os.fspath(path))
    layers = study_layer_data(studies[0]) if studies else []
    if not layers:
        from hlip_engine import StudyLoadError

        reasons = "; ".join(f"{item}: {why}" for s in studies for item, why in s.skipped[:5])
        raise StudyLoadError(f"{path}: no image scans to show ({reasons or 'nothing readable'})")
    _one_study_in_current_viewer(studies)
    return layers


def _one_study_in_current_viewer(studies) -> None:
    """File ▸ Open adds our layers itself: make sure the viewer closes the previous study when they land,
    and say what the loader had to do to this one."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer (a script reading studies): nothing to guard
        viewer = None
    from ._layers import announce_study

    if viewer is not None:
        from ._reading import guard_one_study

        guard_one_study(viewer)
    announce_study(studies[0], others=studies[1:])
