"""Sample data: the demo's phantom brain MRI study with a tumour (real MNI152 anatomy, several series).

Written once as real DICOM by :func:`hlip_engine.demo.make_studies` into the user's cache folder (the
same seed as ``hlip demo``'s library), then opened through the same engine path as any study.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ._layers import study_layer_data

N_STUDIES = 5  # the demo plan draws each finding once in every 5 studies: one of them is a tumour


def sample_folder() -> Path:
    env = os.environ.get("HLIP_NAPARI_CACHE_DIR")
    if env:
        return Path(env) / "sample-phantoms"
    import platformdirs

    return Path(platformdirs.user_cache_dir("hlip-napari")) / "sample-phantoms"


def write_sample_study(folder: Path | None = None) -> Path:
    """Write the phantom studies (once, atomically) and return the MR tumour study's folder."""
    import json

    from hlip_engine.demo import make_studies
    from hlip_engine.demo.showcase import DEMO_SEED

    folder = Path(folder) if folder is not None else sample_folder()
    done = folder.with_name(folder.name + ".complete")  # beside the library, not in it
    if not (done.exists() and folder.is_dir()):
        from hlip_engine.atomic import atomic_dir

        shutil.rmtree(folder, ignore_errors=True)  # a half-written copy from an interrupted run
        with atomic_dir(folder) as tmp:
            make_studies(tmp, N_STUDIES, DEMO_SEED)
        done.write_text("ok\n")
    records = json.loads((folder / "studies.json").read_text())
    pick = next((r for r in records if r["findings"] == ["tumour"] and r["modality"] == "MR"),
                next((r for r in records if r["modality"] == "MR"), records[0]))
    return folder / Path(pick["path"]).name  # records hold the paths of the temporary folder


def sample_study():
    from hlip_engine import load_study

    return load_study(write_sample_study())


def make_sample_study() -> list[tuple]:
    """napari sample-data hook: the phantom MR study with a tumour, one layer per series (its arrival one
    study switch, as a study opened from a folder)."""
    from ._reader import _current_viewer

    viewer = _current_viewer()
    if viewer is not None:
        from ._show import watch

        watch(viewer)
    return study_layer_data(sample_study())
