"""The napari Worklist widget: STAT studies on top and flagged, live refresh from the listener's SQLite,
double-click opens the study with the plugin's reader (a real viewer; needs a display: xvfb-run, as
tests/napari)."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run -a")


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_worklist_widget_flags_stat_refreshes_and_opens(viewer, qtbot, phantoms, tmp_path):
    from hlip_engine.triage.worklist import Worklist
    from hlip_napari._qt.worklist import WorklistWidget

    ct = next(r for r in phantoms["records"] if r["modality"] == "CT")
    wl = Worklist(tmp_path / "lib.index" / "worklist.sqlite")
    common = dict(rule="r", probabilities={}, modality="MR", description="BRAIN", series=3, instances=90,
                  fingerprint="f")
    wl.received("1.2.1", "/nowhere/1.2.1", at=100.0)
    wl.done("1.2.1", priority="ROUTINE", rank=2, finding="atrophy", score=0.3, **common)
    wl.received(ct["uid"], ct["path"], at=200.0)
    wl.done(ct["uid"], priority="STAT", rank=0, finding="haemorrhage", score=0.87, **common | {"modality": "CT"})

    widget = WorklistWidget(viewer, index_dir=str(tmp_path / "lib.index"), refresh_ms=100)
    qtbot.addWidget(widget)
    assert widget.table.rowCount() == 2
    assert widget.table.item(0, 0).text() == "STAT" and widget.table.item(0, 0).font().bold()
    assert widget.table.item(0, 4).text() == "haemorrhage" and not widget.table.item(1, 0).font().bold()
    assert "1 STAT" in widget.status.text()

    wl.received("1.2.3", "/nowhere/1.2.3", at=300.0)  # arrives while the widget is open
    qtbot.waitUntil(lambda: widget.table.rowCount() == 3, timeout=5000)
    assert widget.table.item(2, 1).text() == "received"

    widget.open_row(1)  # a study not on disk: said, nothing opened
    assert "not on disk" in widget.status.text() and len(viewer.layers) == 0
    widget.table.cellDoubleClicked.emit(0, 3)
    qtbot.waitUntil(lambda: len(viewer.layers) > 0, timeout=60000)
    widget.close()
    wl.close()
