"""hlip_engine.windows: CT window presets and ONE body-part reading shared by the recipe choice
(``recipe_for``) and the viewer's opening window (``hlip_napari._layers``); torch-free at import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hlip_engine.preprocessing import recipe_for
from hlip_engine.study import Scan, Study


def _ct(description: str = "", body_part: str = "", kernel: str = "", fov_mm: float = 250.0,
        study_description: str = "") -> Study:
    vol = np.zeros((4, 10, 10), dtype=np.float32)
    affine = np.diag([fov_mm / 10, fov_mm / 10, 5.0, 1.0])
    attrs = {k: v for k, v in (("BodyPartExamined", body_part), ("ConvolutionKernel", kernel)) if v}
    scan = Scan(vol, affine, modality="CT", description=description, attributes=attrs)
    return Study(uid="1.2.3", scans=[scan], description=study_description, modality="CT")


# (study, the recipe it gets, the window the viewer opens it in)
CASES = [
    (_ct("CTA CEREBRAL"), "head-ct", "Brain"),                        # "cerebr": the viewer used to say Soft tissue
    (_ct("AX 5mm", fov_mm=240.0), "head-ct", "Brain"),                 # no words: the field of view decides
    (_ct("AX 5mm", fov_mm=400.0), "chest-ct", "Mediastinum"),
    (_ct("HEAD AX", body_part="CHEST"), "chest-ct", "Mediastinum"),    # BodyPartExamined before descriptions
    (_ct("CT PE PROTOCOL", fov_mm=400.0), "chest-ct", "Mediastinum"),  # "ct pe" is a chest study
    (_ct("AX LUNG", kernel="B70f", fov_mm=400.0), "chest-ct", "Lung"),
    (_ct("STROKE PROTOCOL"), "head-ct", "Brain"),
    (_ct("HEAD", study_description="CT HEAD CHEST", fov_mm=400.0), "chest-ct", "Mediastinum"),  # both named: fov
]


@pytest.mark.parametrize(("study", "recipe", "window"), CASES)
def test_recipe_and_viewer_window_read_the_same_body_part(study, recipe, window):
    from hlip_napari._layers import default_ct_window

    assert recipe_for(study) == recipe
    assert default_ct_window(study.scans[0], study) == window
    if not study.description:  # a scan alone reads as a one-scan study
        assert default_ct_window(study.scans[0]) == window


def test_presets_and_limits():
    from hlip_engine import windows

    assert windows.window_limits("Brain") == (0.0, 80.0) and windows.window_limits("Subdural") == (-25.0, 175.0)
    assert set(windows.head_ct_windows()) == {"blood", "brain", "bone"}
    assert "Lung" in windows.window_presets() and not any(k.startswith("_") for k in windows.window_presets())
    with pytest.raises(ValueError, match="unknown CT window"):
        windows.window_limits("Spleen")
    rng = np.random.default_rng(0)
    lo, hi = windows.auto_limits(rng.normal(100, 10, (20, 30, 30)))
    assert 60 < lo < 80 and 120 < hi < 140


def test_windows_and_zeroshot_import_without_torch():
    code = ("import sys; import hlip_engine.windows, hlip_engine.zeroshot, hlip_napari._layers; "
            "from hlip_engine.zeroshot import resolve_prompt_set, prompt_set_names; "
            "assert resolve_prompt_set(prompt_set_names()[0])['classes']; "
            "bad = [m for m in ('torch', 'faiss') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
