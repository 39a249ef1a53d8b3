"""napari reader: a clinical study (DICOM folder, DICOMDIR, NIfTI, HLIP tensor folder) -> one layer per scan.

``get_reader`` only looks (names, a few 132-byte headers); it never raises and returns ``None`` for
paths that are not this plugin's (a zarr store, a PNG). A folder is claimed whole: a folder with no study in
it gets a plain message from this plugin rather than napari's reader chooser.

``read_study`` loads the study with the engine (:func:`hlip_engine.load_study`) and returns its scans as
layer data; napari adds them and :mod:`._show` makes the arrival one transaction (the study on screen
closes when the new one's scans are in). A folder that cannot be read changes nothing on screen: the reason
is shown as a notification and in the Study browser, and napari gets "handled, no layers".

napari asks which reader to use when two claim a path (its own reader claims ``*.dcm`` and every folder):
when the plugin is activated, :func:`prefer_for_studies` records this plugin in napari's reader preferences
for DICOM/NIfTI files and folders where the user has chosen no other reader for them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ._layers import study_layer_data
from ._on_screen import on_screen

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TENSOR_SUFFIXES = (".pt",)
MAX_PROBES = 40  # files looked at before giving up on a folder: cheap even on a network share
MAX_DEPTH = 4  # PACS exports nest patient/study/series/file
MAX_STUDIES = 8  # a DICOMDIR or archive folder with more studies is a library: use the search widget
PLUGIN = "hlip-napari"
# napari reader preferences (fnmatch on the real path; folders end in the separator)
READER_PATTERNS = ("*.dcm", "*.DCM", "*.dicom", "*.ima", "*.IMA", "*.nii", "*.nii.gz", "*" + os.sep)
log = logging.getLogger(__name__)


def prefer_for_studies() -> list[str]:
    """Make napari open DICOM and NIfTI files and folders with this plugin where the user has chosen no other
    reader for them (napari's Preferences > Plugins > File extension readers); returns the patterns added."""
    try:
        from napari.settings import get_settings

        plugins = get_settings().plugins
        current = dict(plugins.extension2reader)
    except Exception:  # noqa: BLE001 - no napari settings (a script, an old napari): nothing to do
        return []
    added = [p for p in READER_PATTERNS if p not in current]
    if added:
        try:
            plugins.extension2reader = {**current, **dict.fromkeys(added, PLUGIN)}
        except OSError as e:  # napari saves its settings file at once: a read-only one keeps napari's choice
            log.warning("could not record hlip-napari as the reader for studies in napari's settings: %s", e)
            return []
    return added


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


def _claims_folder(folder: str, denied: list[str] | None = None) -> bool:
    """Whether a folder looks like a study: a DICOMDIR, DICOM/NIfTI files or HLIP .pt tensors inside.
    Folders it had no permission to list are appended to ``denied``."""
    probes = 0
    stack = [(folder, 0)]
    while stack and probes < MAX_PROBES:
        current, depth = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            if isinstance(e, PermissionError) and denied is not None:
                denied.append(current)
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


def _other_format_folder(folder: str) -> bool:
    """A folder that is another reader's (a zarr store), not a study folder."""
    if folder.rstrip("/\\").lower().endswith((".zarr", ".ome.zarr", ".n5")):
        return True
    return any(os.path.exists(os.path.join(folder, name)) for name in (".zarray", ".zgroup", "zarr.json"))


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
            return None if _other_format_folder(path) else read_study
        if os.path.isfile(path):
            return read_study if _claims_file(os.path.basename(path), path) else None
        return None
    except Exception:  # noqa: BLE001 - a reader check must never raise
        return None


def load_studies(path: str) -> list:
    """One study (the usual case), or each study of a folder/DICOMDIR that holds a few."""
    from hlip_engine import StudyLoadError, discover, load_study

    target = _study_path(path)
    denied: list[str] = []
    if os.path.isdir(target) and not _claims_folder(target, denied):
        if denied:
            where = "" if denied[0] == target else f" ({os.path.relpath(denied[0], target)})"
            raise StudyLoadError(f"{target}: no permission to read this folder{where}; ask for read access")
        raise StudyLoadError(f"{target}: no study here (no DICOM, DICOMDIR, NIfTI or HLIP .pt files found)")
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
    """Load the study at ``path`` and return napari layer data: one image layer per scan (the first shown).

    One patient on screen: a folder holding several studies gives the first (the others are named in a
    notification). A path that holds no readable study returns napari's "handled, no layers" value after
    saying why (a notification, and the Study browser's line): the study on screen stays."""
    from hlip_engine import StudyLoadError

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    viewer = _current_viewer()
    try:
        studies = load_studies(path)
        studies = [s for s in studies if s.scans] + [s for s in studies if not s.scans]
        layers = study_layer_data(studies[0]) if studies else []
        if not layers:
            from ._show import why_empty

            raise StudyLoadError(f"{path}: no image scans to show ({why_empty(studies)})")
    except Exception as e:  # noqa: BLE001 - whatever the files hold: a message, never a traceback
        report_failure(viewer, path, e)
        return [(None,)]
    if viewer is not None:
        from ._show import watch

        watch(viewer)  # the arrival of these layers is one study switch
    from ._layers import announce_study

    announce_study(studies[0], others=studies[1:])
    return layers


def report_failure(viewer, path: str, error: BaseException) -> None:
    """Say why ``path`` did not open, in words (no traceback), leaving the study on screen as it is."""
    from napari.utils.notifications import show_warning

    text = str(error) if path in str(error) else f"Could not open {path}: {error}"
    log.info("opening %s failed: %s", path, error)
    if viewer is not None:
        on_screen(viewer).fail(text)
    shown = on_screen(viewer).study if viewer is not None else None
    show_warning(text + ("" if shown is None else " The study on screen stays open."))


def on_activate(context=None) -> None:
    """npe2 activation hook (the first time napari runs one of this plugin's commands)."""
    prefer_for_studies()


def _current_viewer():
    try:
        import napari

        from ._view import unwrap

        viewer = napari.current_viewer()
        return unwrap(viewer) if viewer is not None else None
    except Exception:  # noqa: BLE001 - no viewer (a script reading studies)
        return None
