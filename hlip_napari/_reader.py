"""napari reader: a clinical study (DICOM folder, DICOMDIR, NIfTI, HLIP tensor folder) -> one layer per scan.

``get_reader`` only looks (names, a few 132-byte headers); it never raises and returns ``None`` for
paths that are not studies, so napari can ask other readers. The loading itself is the engine's
:func:`hlip_engine.load_study`; placement and contrast come from :mod:`hlip_napari._layers`.

File > Open and drag-and-drop load in a worker thread (a study takes seconds to decode; the viewer stays
live, a progress bar runs) and the scans arrive when ready; ``viewer.open(path)`` from a script still
returns the layers at once. napari asks which reader to use when two claim a path (its own reader claims
``*.dcm`` and every folder): :func:`prefer_for_studies` records this plugin in napari's reader preferences
for DICOM/NIfTI files and for folders, unless the user chose another reader for them; a folder this reader
declines then goes to napari's reader dialog as before.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ._layers import study_layer_data

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
        plugins.extension2reader = {**current, **dict.fromkeys(added, PLUGIN)}
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
    notification), and the study already in the viewer is closed when these layers arrive. Opened from
    napari's GUI (File > Open, drag and drop) the study loads in a worker and this returns napari's
    "handled, no layers yet" value; the scans are added when loaded."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    prefer_for_studies()
    viewer = _gui_open_viewer()
    if viewer is not None:
        _open_in_worker(viewer, path)
        return [(None,)]
    studies = load_studies(path)
    layers = study_layer_data(studies[0]) if studies else []
    if not layers:
        from hlip_engine import StudyLoadError

        reasons = "; ".join(f"{item}: {why}" for s in studies for item, why in s.skipped[:5])
        raise StudyLoadError(f"{path}: no image scans to show ({reasons or 'nothing readable'})")
    _one_study_in_current_viewer(studies)
    return layers


def on_activate(context=None) -> None:
    """npe2 activation hook (the first time napari runs one of this plugin's commands)."""
    prefer_for_studies()
    start_warming()


def warm_napari() -> None:
    """Pay napari's one-off costs of a first image layer before the first study arrives: the modules napari
    imports lazily for an image layer, its controls and its vispy visual (about 0.4 s on a 2-core machine,
    all of it on the Qt thread otherwise). pint's unit registry is not touched here: :mod:`._warmup` builds
    it aside (pint builds its own in place, and the Qt thread would find it half-built)."""
    try:
        import napari._qt.layer_controls.qt_image_controls  # noqa: F401
        import napari._vispy.layers.image  # noqa: F401
        import napari.layers.image.image  # noqa: F401
        import scipy.ndimage  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an optimisation only
        log.debug("warming napari failed: %s", e)


_WARMING: list = []


def start_warming() -> None:
    """:func:`warm_napari` once, in a daemon thread (imports release the GIL often: the viewer stays live)."""
    if _WARMING:
        return
    import threading

    thread = threading.Thread(target=warm_napari, name="hlip-warm-napari", daemon=True)
    _WARMING.append(thread)
    thread.start()


def _from_gui_open() -> bool:
    """Whether napari's GUI open (File > Open, drag and drop: ``QtViewer._qt_open``) is calling."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_qt_open" and "napari" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _gui_open_viewer():
    if not _from_gui_open():
        return None
    try:
        import napari

        return napari.current_viewer()
    except Exception:  # noqa: BLE001
        return None


def _open_in_worker(viewer, path: str) -> None:
    """Load ``path`` off the Qt thread with a progress bar, then show it (one patient on screen)."""
    from napari.qt.threading import create_worker
    from napari.utils import progress
    from napari.utils.notifications import show_error

    from ._layers import show_study_gradually

    bar = progress(total=0, desc=f"Opening {Path(path).name}")
    worker = create_worker(load_studies, path, _start_thread=False, _ignore_errors=True)  # errors: `failed`

    def done(studies):
        bar.close()
        if not any(s.scans for s in studies):
            reasons = "; ".join(f"{item}: {why}" for s in studies for item, why in s.skipped[:5])
            show_error(f"{path}: no image scans to show ({reasons or 'nothing readable'})")
            return
        show_study_gradually(viewer, [s for s in studies if s.scans] + [s for s in studies if not s.scans])

    def failed(exc):
        bar.close()
        log.info("opening %s failed: %s", path, exc)
        show_error(str(exc) if path in str(exc) else f"Could not open {path}: {exc}")

    worker.returned.connect(done)
    worker.errored.connect(failed)
    _WORKERS.add(worker)
    worker.finished.connect(lambda: _WORKERS.discard(worker))
    worker.start()


_WORKERS: set = set()  # running open workers (kept referenced until they finish)


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
