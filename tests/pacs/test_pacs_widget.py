"""The napari PACS widget against the real Orthanc: search with filters, retrieve with progress, cancel, open."""
from __future__ import annotations

import numpy as np
from pacs_server import CT_STUDY_UID, dicom_files

from hlip_engine.io import load_study
from hlip_engine.pacs import StudyCache


def _widgets(make_napari_viewer):
    from hlip_napari._launch import dock_widgets

    viewer = make_napari_viewer(show=True)
    widgets = dock_widgets(viewer, ("Study browser", "PACS"))
    return viewer, widgets["PACS"], widgets["Study browser"]


def test_find_retrieve_and_open_in_the_study_browser(orthanc, library, make_napari_viewer, qtbot, tmp_path):
    from hlip_napari._view import scan_layers

    viewer, pacs, browser = _widgets(make_napari_viewer)
    pacs.node.setCurrentText(orthanc.dimse_url)
    pacs.echo()
    qtbot.waitUntil(lambda: "answers" in pacs.status.text(), timeout=30_000)

    a = library["phantoms"][0]
    pacs.description.setText(a["description"])
    pacs.date_from.setText(f"{a['date'][:4]}-{a['date'][4:6]}-{a['date'][6:]}")
    pacs.search()
    qtbot.waitUntil(lambda: bool(pacs.rows) and pacs.table.rowCount() == len(pacs.rows), timeout=30_000)
    assert a["uid"] in [r["study_uid"] for r in pacs.rows]
    assert pacs.table.horizontalHeaderItem(0).text() == "Date"  # no patient columns unless asked
    row = [r["study_uid"] for r in pacs.rows].index(a["uid"])

    seen = []
    worker = pacs.retrieve(row)
    worker.yielded.connect(lambda msg: seen.append(dict(getattr(msg, "event", {}))))
    # the study's scans arrive one per event-loop turn: all of them, then the checks
    qtbot.waitUntil(lambda: browser.study is not None and browser.study.uid == a["uid"]
                    and len(scan_layers(viewer, browser.study)) == len(browser.study.scans), timeout=60_000)
    n = len(dicom_files(a["path"]))
    assert pacs.series_progress.value() == pacs.series_progress.maximum() == n
    assert seen and seen[-1]["done"] == n and max(e.get("series_index", 0) for e in seen) == len(a["series"]) - 1
    assert pacs.opened_path == str(StudyCache().study_dir(a["uid"]))
    local = load_study(a["path"])
    layers = scan_layers(viewer)
    assert len(layers) == len(local.scans) == len(browser.study.scans)
    by_uid = {s.series_uid: s for s in browser.study.scans}
    for scan in local.scans:
        np.testing.assert_array_equal(by_uid[scan.series_uid].voxels, scan.voxels)
        np.testing.assert_allclose(by_uid[scan.series_uid].affine, scan.affine, atol=1e-6)

    # patient columns on request
    pacs.show_patient.setChecked(True)
    pacs.patient_id.setText("CT300")
    pacs.description.setText("")
    pacs.date_from.setText("")
    pacs.rows = []
    pacs.search()
    qtbot.waitUntil(lambda: bool(pacs.rows), timeout=30_000)
    assert pacs.table.horizontalHeaderItem(0).text() == "Patient ID" and pacs.table.item(0, 0).text() == "CT300"


def test_cancel_keeps_nothing_half_retrieved(orthanc, make_napari_viewer, qtbot):
    viewer, pacs, browser = _widgets(make_napari_viewer)
    pacs.node.setCurrentText(orthanc.dicomweb_url)
    pacs.patient_id.setText("CT300")
    pacs.search()
    qtbot.waitUntil(lambda: bool(pacs.rows), timeout=30_000)
    assert pacs.rows[0]["study_uid"] == CT_STUDY_UID
    # a thumbnail rendered by the server (WADO-RS /rendered) in the Date cell
    qtbot.waitUntil(lambda: CT_STUDY_UID in pacs.thumbnails, timeout=30_000)
    from qtpy.QtGui import QImage

    img = QImage.fromData(pacs.thumbnails[CT_STUDY_UID], "PNG")
    assert not img.isNull() and max(img.width(), img.height()) <= 48
    assert not pacs.table.item(0, 0).icon().isNull()

    pacs.retrieve(0)
    pacs.cancel_button.click()  # at once: the engine stops before the next image (see the engine tests)
    qtbot.waitUntil(lambda: "cancelled" in pacs.status.text(), timeout=60_000)
    qtbot.waitUntil(lambda: pacs.retrieve_button.isEnabled(), timeout=10_000)
    cache = StudyCache()
    assert not cache.complete(CT_STUDY_UID)
    folder = cache.study_dir(CT_STUDY_UID)
    assert not folder.exists() or not any(folder.iterdir())
    assert browser.study is None

    # a second retrieve completes and opens
    pacs.retrieve(0)
    qtbot.waitUntil(lambda: browser.study is not None, timeout=60_000)
    assert browser.study.uid == CT_STUDY_UID and browser.study.scans[0].shape == (300, 256, 256)


def test_a_search_hit_of_a_pacs_built_index_opens_by_retrieving_it(orthanc, library, make_napari_viewer, qtbot,
                                                                    tmp_path):
    """`hlip index build NODE` drops the pixels once embedded; double-clicking the hit in the Search widget
    retrieves the study from its node again and opens it."""
    from pathlib import Path

    from hlip_engine.index.embed_pipeline import build_node
    from hlip_napari._launch import dock_widgets
    from hlip_napari._session import SETTINGS
    from hlip_napari._view import scan_layers

    a = library["phantoms"][0]
    ckpt = Path(__file__).resolve().parents[2] / "hlip_engine" / "weights" / "hlip_demo.safetensors"
    report = build_node(orthanc.dicomweb_url, ckpt, tmp_path / "ix", filters={"description": a["description"],
                        "date_from": a["date"], "date_to": a["date"]}, workers=0, progress=False,
                        log=lambda _m: None)
    assert report.indexed == 1 and not report.skipped
    assert not StudyCache().complete(a["uid"])  # embedded, then dropped from the cache

    viewer = make_napari_viewer(show=True)
    search = dock_widgets(viewer, ("Search studies",))["Search studies"]
    SETTINGS.update(checkpoint=str(ckpt), text_model="", device="cpu")
    search.set_index(str(tmp_path / "ix"))
    search.search("a brain study")
    qtbot.waitUntil(lambda: search.table.rowCount() == 1, timeout=60_000)
    hit = search.rows[0]
    assert hit["node"] == orthanc.dicomweb_url and hit["study_uid"] == a["uid"]
    search.open_result(0)
    local = load_study(a["path"])
    qtbot.waitUntil(lambda: len(scan_layers(viewer)) == len(local.scans), timeout=60_000)
    assert {layer.metadata["study_uid"] for layer in scan_layers(viewer)} == {a["uid"]}
    assert StudyCache().complete(a["uid"])  # retrieved again, whole
    qtbot.waitUntil(lambda: search.status.text().startswith("Opened"), timeout=30_000)


def test_save_to_pacs_files_the_results_and_the_browser_shows_them_when_the_study_comes_back(
        orthanc, library, make_napari_viewer, qtbot, screenshot_dir):
    """Relevance's "Save to PACS" stores an SR and relevance maps with the study on the real Orthanc
    (DICOMweb); retrieved again through the PACS widget, the study opens with its filed findings shown in
    the Study browser (research result, UNVERIFIED)."""
    from hlip_engine.demo.showcase import DEMO_MODEL
    from hlip_engine.pacs import connect
    from hlip_napari._launch import dock_widgets, save_screenshot
    from hlip_napari._session import SETTINGS

    SETTINGS.update(checkpoint=str(DEMO_MODEL), text_model="", device="cpu")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    docks = dock_widgets(viewer, ("Study browser", "PACS", "Relevance map"))
    browser, pacs, rw = docks["Study browser"], docks["PACS"], docks["Relevance map"]
    b = library["phantoms"][1]
    browser.open_path(b["path"])
    qtbot.waitUntil(lambda: browser.study is not None and browser.study.uid == b["uid"], timeout=60_000)
    assert not browser.findings.isVisible()  # nothing filed yet

    rw.prompt.setText("mass with surrounding oedema")
    saving = rw.save_to_pacs
    saving.node.setCurrentText(orthanc.dicomweb_url)
    saving.save()
    qtbot.waitUntil(lambda: not saving.job.running, timeout=300_000)
    assert saving.status.text().startswith(f"Stored on {orthanc.dicomweb_url}"), saving.status.text()
    with connect(orthanc.dicomweb_url) as client:
        modalities = {s.get("modality") for s in client.find_series(b["uid"])}
    assert {"SR", "OT"} <= modalities

    pacs.node.setCurrentText(orthanc.dimse_url)
    pacs.description.setText(b["description"])
    pacs.search()
    qtbot.waitUntil(lambda: bool(pacs.rows) and pacs.table.rowCount() == len(pacs.rows), timeout=30_000)
    row = [r["study_uid"] for r in pacs.rows].index(b["uid"])
    browser.open_path(str(library["pydicom"]))  # another study on screen first: the retrieve must switch back
    qtbot.waitUntil(lambda: browser.study is not None and browser.study.uid != b["uid"], timeout=60_000)
    pacs.retrieve(row)
    try:
        qtbot.waitUntil(lambda: browser.study is not None and browser.study.uid == b["uid"], timeout=120_000)
    except Exception as e:
        raise AssertionError(f"not opened: PACS says {pacs.status.text()!r}; browser says "
                             f"{browser.title.text()!r}") from e
    assert browser.findings.isVisible()
    text = browser.findings.text()
    assert "HLIP findings filed with this study" in text and "UNVERIFIED" in text
    assert "mass with surrounding oedema" in text and "%" in text
    assert not any(layer.metadata.get("modality") == "OT" for layer in viewer.layers)  # maps are not scans
    browser.parentWidget().raise_()
    save_screenshot(viewer, screenshot_dir / "study_browser_filed_findings.png")
