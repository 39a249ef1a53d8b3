"""The README's picture of the Relevance widget (docs/img/relevance_widget_demo.png): the shipped demo model on
`hlip demo`'s first tumour study, after *Go to the most relevant slice*; prints where the peak is and how far
from the lesion's centre.

    ./run.sh --no-gui    # writes demo-output/library
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_relevance_widget.py [OUT.png]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def pump(app, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.05)


def main(out: str = "docs/img/relevance_widget_demo.png") -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from hlip_engine.demo.showcase import DEMO_MODEL
    from hlip_engine.io import load_study
    from hlip_napari._launch import dock_widgets, save_screenshot
    from hlip_napari._session import SETTINGS
    from hlip_napari._show import show_study as add_studies

    records = Path("demo-output/library/studies.json")
    if not records.is_file():
        print(f"{records}: not found; run ./run.sh --no-gui first", file=sys.stderr)
        return 2
    target = next(r for r in json.loads(records.read_text()) if r["findings"] == ["tumour"])
    SETTINGS.update(checkpoint=str(DEMO_MODEL), text_model="", device="cpu")
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    widgets = dock_widgets(viewer, ("Study browser", "Relevance map"))
    add_studies(viewer, [load_study(target["path"])])
    rel = widgets["Relevance map"]
    rel.prompt.setText("mass with surrounding oedema")
    rel.run()
    app = QApplication.instance()
    t0 = time.time()
    while rel.result is None and time.time() - t0 < 300:
        pump(app, 0.05)
    if rel.result is None:
        print("the relevance map did not arrive within 5 min", file=sys.stderr)
        return 1
    pump(app, 2)
    rel.go_to_peak()
    pump(app, 2)
    _scan, world = rel.peak()
    centre = np.array(target["details"]["centre_lps"])
    print(f"peak {np.round(world, 1)} (S, P, L mm), {np.linalg.norm(np.array(world)[::-1] - centre):.1f} mm from the "
          f"lesion centre; method {rel.result.method}; {rel.status.text()}")
    viewer.window.dock_widgets["Relevance map (hlip-napari)"].parentWidget().raise_()
    save_screenshot(viewer, out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
