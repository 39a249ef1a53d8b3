"""Pick the reader for a path: HLIP tensor folder, NIfTI file/folder, or DICOM (the default).

The NIfTI and tensor readers live in :mod:`hlip_engine.io.nifti` and :mod:`hlip_engine.io.tensors`;
they are imported only when a path needs them.
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from ..study import Study, StudyLoadError, StudyRef
from .dicom import load_dicom_study, refs_from_headers, scan_headers
from .dicom_series import LoadOptions

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _options(options: dict) -> LoadOptions:
    known = {f.name for f in fields(LoadOptions)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown study loading option(s) {sorted(unknown)}; known: {sorted(known)}")
    return LoadOptions(**options)


def _is_tensor_folder(path: Path) -> bool:
    try:
        from .tensors import is_tensor_folder
    except ImportError:
        return False
    return bool(is_tensor_folder(path))


def _is_nifti(path: Path) -> bool:
    try:
        from .nifti import is_nifti
    except ImportError:
        return path.is_file() and path.name.lower().endswith(_NIFTI_SUFFIXES)
    return bool(is_nifti(path))


def _load_nifti(path: str) -> Study:
    from .nifti import load_nifti_study

    return load_nifti_study(path)


def _load_tensors(path: str) -> Study:
    from .tensors import load_tensor_study

    return load_tensor_study(path)


def detect_kind(path: Path) -> str:
    """"tensors", "nifti" or "dicom" for what ``path`` holds."""
    if path.is_dir() and _is_tensor_folder(path):
        return "tensors"
    if _is_nifti(path):
        return "nifti"
    return "dicom"


def load_study(path_or_ref, **options) -> Study:
    """One study from a DICOM folder (any depth, DICOMDIR or not), a NIfTI file or folder, a folder of HLIP
    tensors, or a :class:`StudyRef` from :func:`discover`. Options (DICOM): see ``LoadOptions``.

    Raises StudyLoadError naming the path when nothing can be read or when the path holds several studies.
    """
    opts = _options(options)
    if isinstance(path_or_ref, StudyRef):
        ref = path_or_ref
        if ref.kind == "dicom":
            return load_dicom_study(ref, options=opts)
        if ref.kind == "nifti":
            return _load_nifti(ref.source)
        if ref.kind == "tensors":
            return _load_tensors(ref.source)
        raise StudyLoadError(f"{ref.source}: unknown study kind {ref.kind!r}")
    path = Path(path_or_ref)
    if not os.path.exists(path):
        raise StudyLoadError(f"{path}: no such file or folder")
    kind = detect_kind(path)
    if kind == "tensors":
        return _load_tensors(str(path))
    if kind == "nifti":
        return _load_nifti(str(path))
    return load_dicom_study(path, options=opts)


def discover(path, progress: bool = False) -> list[StudyRef]:
    """Every study under ``path`` from headers only: DICOM studies (by StudyInstanceUID), folders of NIfTI
    files (one study per folder) and HLIP tensor folders. Sorted by date, description, uid."""
    return discover_with_problems(path, progress)[0]


def discover_with_problems(path, progress: bool = False) -> tuple[list[StudyRef], list[tuple[str, str]]]:
    """``discover`` plus the (file, reason) of every file that belongs to no study (unreadable, not DICOM,
    no StudyInstanceUID such as a DICOMDIR index)."""
    root = Path(path)
    if not os.path.exists(root):
        raise StudyLoadError(f"{root}: no such file or folder")
    kind = detect_kind(root)
    if kind != "dicom":
        return [StudyRef(uid=root.name, source=str(root), kind=kind, files=(str(root),), description=root.name)], []
    from .dicom_headers import walk_files
    from .dicom_series import object_skip_reason

    problems: list[tuple[str, str]] = []
    dicom_files, nifti_folders, tensor_folders, checked = [], {}, [], set()
    for f in walk_files(root, problems):
        low = f.lower()
        parent = os.path.dirname(f)
        if low.endswith(_NIFTI_SUFFIXES):
            nifti_folders.setdefault(parent, []).append(f)
        elif low.endswith(".pt"):
            from .tensors import tensor_study_folder

            study_folder = str(tensor_study_folder(f))  # <study>/<scan>/img.pt belongs to <study>
            if study_folder not in checked:
                checked.add(study_folder)
                if _is_tensor_folder(Path(study_folder)):
                    tensor_folders.append(study_folder)
        else:
            dicom_files.append(f)
    headers, unreadable = scan_headers(dicom_files, progress=progress, discovery=True)
    problems += unreadable
    problems += [(h.path, object_skip_reason(h, LoadOptions()) or "no StudyInstanceUID")
                 for h in headers if not h.study_uid]
    refs = refs_from_headers(headers, str(root))
    for folder, files in sorted(nifti_folders.items()):
        refs.append(StudyRef(uid=Path(folder).name, source=folder, kind="nifti", files=tuple(sorted(files)),
                             description=Path(folder).name, n_series=len(files)))
    for folder in sorted(tensor_folders):
        refs.append(StudyRef(uid=Path(folder).name, source=folder, kind="tensors", description=Path(folder).name))
    return refs, problems
