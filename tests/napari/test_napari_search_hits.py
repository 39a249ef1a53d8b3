"""Search hits that can be judged before opening: the report's impression (recorded by
`hlip index build --reports`), age/sex, a score tooltip, modality/date filters; opening a hit replaces the
study on screen."""
from __future__ import annotations

import json

from napari_helpers import raise_dock, tiny_study, use_model, write_two_plane_study
from qtpy.QtCore import Qt

from hlip_engine.cli import main as hlip
from hlip_engine.index.reports import impression_of
from hlip_engine.io import write_dicom_series
from hlip_engine.study import PatientInfo
from hlip_napari._launch import dock_widgets, save_screenshot
from hlip_napari._qt.search import COLUMNS, IMPRESSION_COLUMN

MR_UID = "1.2.826.0.1.3680043.8.498.5"
CT_IMPRESSION = "No acute intracranial haemorrhage. Old right frontal infarct."


def test_impression_is_the_impression_section():
    report = "FINDINGS: Ventricles normal. IMPRESSION: Left frontal glioma. RECOMMENDATION: MRI follow-up."
    assert impression_of(report) == "Left frontal glioma."
    assert impression_of("Normal study.") == "Normal study."


def test_hits_show_the_impression_age_and_sex(tmp_path, tiny_checkpoint, make_napari_viewer, qtbot, capsys,
                                              screenshot_dir):
    library = tmp_path / "library"
    _f, _m, _a = write_two_plane_study(library / "ct_head")
    for scan in tiny_study().scans:
        write_dicom_series(scan, library / "mr_brain" / f"s{scan.series_number}", study_uid=MR_UID,
                           series_number=scan.series_number, study_description="MR BRAIN", study_date="20240104",
                           patient=PatientInfo(name="Doe^Jane", id="P123", birth_date="19570301", sex="F"))
    reports = tmp_path / "reports.csv"
    reports.write_text("study_uid,report\n"
                       f"{MR_UID},\"FINDINGS: enhancing mass. IMPRESSION: Left frontal glioma with oedema.\"\n"
                       f"ct_head,\"{CT_IMPRESSION}\"\n")
    index = tmp_path / "index"
    assert hlip(["index", "build", str(library), "--model", str(tiny_checkpoint), "--index", str(index),
                 "--reports", str(reports), "--recipe", "auto", "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert hlip(["search", str(index), "glioma", "--json", "-k", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    hits = {h["description"]: h for h in json.loads(out)["hits"]}
    assert len(hits) == 2, out
    assert hits["MR BRAIN"]["impression"] == "Left frontal glioma with oedema."
    assert hits["CT HEAD"]["impression"] == CT_IMPRESSION  # matched by the study's folder name
    assert hits["MR BRAIN"]["age"] == 66 and hits["MR BRAIN"]["sex"] == "F"  # patient characteristics
    assert "birth_date" not in json.dumps(hits) and "19570301" not in json.dumps(hits)
    assert "Doe" not in json.dumps(hits) and "P123" not in json.dumps(hits)  # identifiers not stored

    use_model(tiny_checkpoint)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    widgets = dock_widgets(viewer, ("Study browser", "Search studies"))
    sw = widgets["Search studies"]
    sw.set_index(str(index))
    sw.query.setText("glioma")
    qtbot.keyClick(sw.query, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: sw.table.rowCount() == 2, timeout=120_000)
    shown = {sw.table.item(r, 3).text(): r for r in range(2)}
    mr_row = shown["MR BRAIN"]
    assert sw.table.item(mr_row, IMPRESSION_COLUMN).text() == "Left frontal glioma with oedema."
    assert sw.table.item(mr_row, COLUMNS.index("Age/Sex")).text() == "66 y F"
    assert "not a probability" in sw.table.horizontalHeaderItem(0).toolTip()
    # a thumbnail per hit, read in a worker: the middle image of the study's largest series
    qtbot.waitUntil(lambda: len(sw.thumbnails) == 2, timeout=30_000)
    assert not sw.table.item(mr_row, COLUMNS.index("Description")).icon().isNull()
    assert max(sw.thumbnails[mr_row].shape) <= 48 and sw.thumbnails[mr_row].std() > 0
    raise_dock(viewer, "Search studies")
    save_screenshot(viewer, screenshot_dir / "search_impressions.png")

    # filters as the CLI's: CT only
    sw.modality.setCurrentText("CT")
    sw.rows = []
    sw.search()
    qtbot.waitUntil(lambda: len(sw.rows) == 1, timeout=60_000)
    assert sw.rows[0]["modality"] == "CT"

    # double-click opens the hit; a second one replaces it (one patient on screen)
    sw.table.cellDoubleClicked.emit(0, 3)
    browser = widgets["Study browser"]
    # the browser's header follows once the study's layers are all in
    qtbot.waitUntil(lambda: len(viewer.layers) == 2 and browser.study is not None, timeout=60_000)
    assert "CT HEAD" in browser.title.text()
    sw.modality.setCurrentText("MR")
    sw.rows = []
    sw.search()
    qtbot.waitUntil(lambda: len(sw.rows) == 1, timeout=60_000)
    sw.table.cellDoubleClicked.emit(0, 3)
    qtbot.waitUntil(lambda: {layer.metadata["study_uid"] for layer in viewer.layers} == {MR_UID}
                    and browser.study is not None and browser.study.uid == MR_UID, timeout=60_000)
    assert "66 y female" in browser.title.text() and "Doe" not in browser.title.text()
    browser.identifiers.setChecked(True)
    assert "Doe^Jane" in browser.title.text() and "P123" in browser.title.text()
    browser.identifiers.setChecked(False)
    save_screenshot(viewer, screenshot_dir / "search_opened_header.png")
    qtbot.waitUntil(lambda: not sw.job.running and not sw.open.running, timeout=10_000)
