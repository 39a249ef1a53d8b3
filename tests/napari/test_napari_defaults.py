"""Zero-shot defaults that fit the model and the study; results that name their study."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from napari_helpers import axial_scan, head_volume, raise_dock, tiny_study, use_model

from hlip_engine.demo.quality import FINDING_PROMPTS, TEMPLATES
from hlip_engine.model.factory import get_config
from hlip_engine.study import Study
from hlip_engine.zeroshot import default_prompt_set
from hlip_napari._launch import dock_widgets
from hlip_napari._show import show_study as add_studies

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "hlip_engine" / "weights" / "hlip_demo.safetensors"


def _ct_head() -> Study:
    scan = axial_scan(head_volume((8, 20, 20)), modality="CT", description="HEAD", series_number=1)
    return Study(uid="1.2.3", scans=[scan], description="CT HEAD", date="20240102", modality="CT")


def test_the_demo_config_names_its_own_five_findings_and_ct_gets_a_ct_set():
    for config in (get_config("hlip_demo"), {"name": "hlip_demo"}):  # a checkpoint saved before the block
        name, spec, why = default_prompt_set(config, tiny_study())
        assert name == "hlip-demo-5" and "own" in why
        assert spec["classes"] == FINDING_PROMPTS and spec["templates"] == TEMPLATES
    tiny = get_config("hlip_tiny")
    name, spec, _ = default_prompt_set(tiny, _ct_head())
    assert name == "head-ct-hemorrhage" and all("CT" in t for t in spec["templates"])
    name, spec, _ = default_prompt_set(tiny, tiny_study())
    assert name == "pub-brain-5" and all("MRI" in t for t in spec["templates"])
    name, spec, _ = default_prompt_set({**tiny, "zeroshot": {"prompt_set": "ct-rate", "template": "A CT: {}."}},
                                       tiny_study())
    assert name == "ct-rate" and spec["templates"] == ["A CT: {}."]


def test_the_demo_model_classifies_with_its_own_findings_and_names_the_study(make_napari_viewer, qtbot,
                                                                               screenshot_dir):
    from hlip_napari._launch import save_screenshot

    assert DEMO_WEIGHTS.is_file()
    use_model(DEMO_WEIGHTS)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    widgets = dock_widgets(viewer, ("Study browser", "Zero-shot prompts"))
    zs = widgets["Zero-shot prompts"]
    assert zs.prompt_set.currentText() == "Model's default"
    study = tiny_study()
    add_studies(viewer, [study])
    zs.run()
    qtbot.waitUntil(lambda: bool(zs.results), timeout=180_000)
    assert list(zs.results) == list(FINDING_PROMPTS)
    assert zs.used["name"] == "hlip-demo-5"
    assert np.isclose(sum(zs.results.values()), 1.0, atol=1e-5)
    assert "Results for 2024-01-04 MR" in zs.for_study.text() and "hlip-demo-5" in zs.for_study.text()
    assert zs.prompts.toPlainText().splitlines()[0].startswith("normal:")  # what ran is shown, editable
    raise_dock(viewer, "Zero-shot prompts")
    save_screenshot(viewer, screenshot_dir / "zeroshot_demo_default.png")
