"""What the NIfTI and HLIP-tensor readers share: a folder of files, one scan each, read as one study."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from ..study import Scan, StudyLoadError


def path_uid(path: Path) -> str:
    """A stable DICOM-style UID (2.25.<uuid5>) for a file or folder without one."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "file://" + str(Path(path).resolve())).int)


def folder_scans(folder: Path, list_files: Callable[[Path], list[Path]], load_scan: Callable[[Path, int], Scan],
                 *, none_found: str, kind: str, skip: Callable[[Path], str] = lambda f: ""
                 ) -> tuple[list[Scan], list[tuple[str, str]]]:
    """(scans, skipped) of every file ``list_files`` finds; a file that fails (or ``skip`` names) is skipped.

    Raises StudyLoadError naming the folder when it cannot be listed, holds none (``none_found``), or no
    file of ``kind`` could be used.
    """
    try:
        files = list_files(folder)
    except OSError as e:
        raise StudyLoadError(f"{folder}: cannot list the folder ({e})") from e
    if not files:
        raise StudyLoadError(f"{folder}: {none_found}")
    scans, skipped = [], []
    for f in files:
        reason = skip(f)
        if reason:
            skipped.append((str(f), reason))
            continue
        try:
            scans.append(load_scan(f, len(scans)))
        except StudyLoadError as e:
            skipped.append((str(f), str(e)))
    if not scans:
        raise StudyLoadError(f"{folder}: none of its {len(files)} {kind} files could be used: "
                             + "; ".join(reason for _, reason in skipped[:3]))
    return scans, skipped
