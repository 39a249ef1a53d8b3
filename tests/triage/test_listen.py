"""`hlip listen` end to end with the real tools: dcmtk's storescu pushing demo phantoms over concurrent
associations to the listener (a subprocess on a loopback port), the demo model, real FAISS and SQLite."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from triage_helpers import clone_study, storescu, study_uid_of, wait_done, worklist_rows

from hlip_engine.cli import main as hlip
from hlip_engine.index import StudyIndex


def responses(done) -> list[str]:
    """The status of each C-STORE response storescu -v reports, in order."""
    out = done.stdout + done.stderr
    return [line.split("Received Store Response (", 1)[1].rstrip(")") for line in out.splitlines()
            if "Received Store Response (" in line]


def index_uids(index: Path) -> list[str]:
    ix = StudyIndex.open(index)
    try:
        return [m["study_uid"] for m in ix.metadata(np.arange(len(ix)))]
    finally:
        ix.close()


def test_twenty_studies_over_four_associations_each_indexed_once_and_ranked(phantoms, tmp_path, listener_factory,
                                                                          capsys):
    base = sorted((phantoms["root"] / "base").glob("phantom_*"))
    batches = [[clone_study(base[(a * 5 + k) % 4], tmp_path / "send" / f"a{a}" / f"s{k}", f"a{a}s{k}")
                for k in range(5)] for a in range(4)]
    sent = {study_uid_of(s) for batch in batches for s in batch}
    assert len(sent) == 20
    lp = listener_factory(quiet_s=2.0).start()
    results = {}

    def push(a):
        results[a] = storescu(lp.port, *batches[a], check=False)

    threads = [threading.Thread(target=push, args=(a,)) for a in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r.returncode == 0 for r in results.values()), [r.stderr[-500:] for r in results.values()]
    rows = wait_done(lp.index, sent)
    assert {r["study_uid"] for r in rows} == sent and all(r["status"] == "done" for r in rows), rows
    uids = index_uids(lp.index)
    assert sorted(uids) == sorted(sent)  # every study exactly once
    ct = [r for r in rows if r["modality"] == "CT"]
    assert ct and all(r["priority"] == "STAT" and r["finding"] == "haemorrhage" for r in ct), ct
    ranks = [(r["priority_rank"], r["arrived_at"]) for r in rows]
    assert ranks == sorted(ranks) and rows[0]["priority"] == "STAT"
    assert all(r["series"] >= 1 and r["instances"] > 10 for r in rows)

    # the same study sent again: one index entry, and not scored again since it did not change
    again = batches[1][2]
    storescu(lp.port, again)
    uid = study_uid_of(again)
    deadline = time.time() + 60
    while time.time() < deadline and "unchanged" not in lp.log.read_text().split(uid)[-1]:
        time.sleep(0.3)
    row = next(r for r in wait_done(lp.index, {uid}) if r["study_uid"] == uid)
    assert row["scored"] == 1 and sorted(index_uids(lp.index)) == sorted(sent)

    # `hlip worklist --json` prints the same order
    assert hlip(["worklist", str(lp.index), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["worklist"]
    assert [r["study_uid"] for r in listed] == [r["study_uid"] for r in worklist_rows(lp.index)]
    assert hlip(["worklist", str(lp.index)]) == 0
    assert "STAT" in capsys.readouterr().out.splitlines()[1]

    # the logs name studies by UID, never a patient
    log = lp.log.read_text()
    names = {str(pydicom.dcmread(next(s.rglob("*.dcm"))).PatientName) for b in batches for s in b}
    assert uid in log and not any(n in log for n in names) and "PH003" not in log


def test_a_malformed_instance_is_refused_and_the_rest_kept(phantoms, tmp_path, listener_factory):
    study = clone_study(sorted((phantoms["root"] / "base").glob("phantom_*"))[3], tmp_path / "ct", "bad")
    files = sorted(study.rglob("*.dcm"))
    victim = files[5]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # truncated pixel data, valid UIDs
    ds.save_as(victim, enforce_file_format=True)
    lp = listener_factory(quiet_s=1.5).start()
    done = storescu(lp.port, study, check=False)
    answers = responses(done)
    assert len(answers) == len(files) and sum(a != "Success" for a in answers) == 1, answers
    assert "DoesNotMatchSOPClass" in next(a for a in answers if a != "Success")
    uid = study_uid_of(study)
    row = next(r for r in wait_done(lp.index, {uid}) if r["study_uid"] == uid)
    assert row["status"] == "done" and row["instances"] == len(files) - 1
    log = lp.log.read_text()
    assert f"refused instance {ds.SOPInstanceUID}" in log and "pixel data truncated" in log
    assert index_uids(lp.index) == [uid]


def test_kill_9_mid_association_then_the_senders_retry_completes_the_study(phantoms, tmp_path, listener_factory):
    from pynetdicom import AE

    study = clone_study(sorted((phantoms["root"] / "base").glob("phantom_*"))[0], tmp_path / "mr", "kill")
    datasets = [pydicom.dcmread(f) for f in sorted(study.rglob("*.dcm"))]
    total, third = len(datasets), len(datasets) // 3
    uid = study_uid_of(study)
    index = tmp_path / "lib.index"
    lp = listener_factory(quiet_s=3.0).start()
    port = lp.port
    # the sender stops after a third of the study, inside its association, so the kill lands mid-association
    # whatever the machine's speed (storescu sent it all before the kill once, on a busy CI machine)
    ae = AE(ae_title="SENDER")
    for sop, syntax in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}):
        ae.add_requested_context(sop, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="HLIP")
    assert assoc.is_established
    assert [assoc.send_c_store(ds).Status for ds in datasets[:third]] == [0] * third
    lp.kill9()  # mid-association: some instances acknowledged, the rest never answered
    deadline = time.time() + 10
    while assoc.is_established and time.time() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted  # the connection dropped: the rest of the study was never answered
    inbox = index / "inbox" / uid
    assert len(list(inbox.iterdir())) == third  # every acknowledged instance was kept
    again = listener_factory(quiet_s=3.0, index=index, port=port).start()
    time.sleep(1.0)  # within the quiet period: the partial study is not handed on
    assert not (index / "CURRENT").exists() and all(r["status"] == "received" for r in worklist_rows(index))
    storescu(port, study)  # the sender's retry
    row = next(r for r in wait_done(index, {uid}) if r["study_uid"] == uid)
    assert row["status"] == "done" and row["instances"] == total and row["scored"] == 1
    assert index_uids(index) == [uid]
    assert again.proc.poll() is None


def test_a_full_spool_answers_out_of_resources_and_keeps_listening(phantoms, tmp_path, listener_factory):
    study = clone_study(sorted((phantoms["root"] / "base").glob("phantom_*"))[1], tmp_path / "mr", "full")
    lp = listener_factory("--max-spool-gb", str(300_000 / 2**30), quiet_s=30).start()  # ~300 kB
    answers = responses(storescu(lp.port, study, check=False))
    assert "Success" in answers and any("OutOfResources" in a for a in answers), answers
    log = lp.log.read_text()
    assert "status 0xA700" in log and "spool over its limit" in log
    inbox = lp.index / "inbox" / study_uid_of(study)
    assert 0 < len(list(inbox.iterdir())) < len(list(study.rglob("*.dcm")))
    assert lp.proc.poll() is None
    echo = __import__("subprocess").run(["echoscu", "-aec", "HLIP", "127.0.0.1", str(lp.port)], capture_output=True)
    assert echo.returncode == 0


def test_series_sent_in_two_associations_apart_are_scored_together(phantoms, tmp_path, listener_factory):
    study = clone_study(sorted((phantoms["root"] / "base").glob("phantom_*"))[0], tmp_path / "mr", "split")
    series = sorted(p for p in study.iterdir() if p.is_dir())
    assert len(series) == 4
    uid, total = study_uid_of(study), len(list(study.rglob("*.dcm")))
    lp = listener_factory(quiet_s=1.0).start()
    storescu(lp.port, *series[:2])
    first = next(r for r in wait_done(lp.index, {uid}) if r["study_uid"] == uid)
    assert first["scored"] == 1 and first["instances"] < total
    storescu(lp.port, *series[2:])  # the rest, in a later association, after the study was scored
    deadline = time.time() + 90
    row = first
    while time.time() < deadline and not (row["scored"] == 2 and row["status"] == "done"):
        time.sleep(0.3)
        row = next(r for r in worklist_rows(lp.index) if r["study_uid"] == uid)
    assert row["scored"] == 2 and row["instances"] == total and row["series"] > first["series"]
    ix = StudyIndex.open(lp.index)
    assert len(ix) == 1 and ix.metadata([0])[0]["n_scans"] == row["series"]
    assert "replaced in the index" in lp.log.read_text()


def test_orthanc_forwards_a_study_and_gets_its_results_back(phantoms, tmp_path, listener_factory):
    """A real Orthanc sends a study to the listener (its REST store job to a modality); the listener indexes,
    scores and ranks it, and stores its results (SR, relevance map) back on that Orthanc (--results-to)."""
    import sys

    import requests
    from triage_helpers import REPO, free_port

    sys.path.insert(0, str(REPO / "tests" / "pacs"))
    from pacs_server import PASSWORD, USER, Orthanc

    study = clone_study(sorted((phantoms["root"] / "base").glob("phantom_*"))[3], tmp_path / "ct", "orthanc")
    uid = study_uid_of(study)
    port = free_port()
    pacs = Orthanc(tmp_path / "orthanc")
    config = json.loads(pacs.config.read_text())
    config["DicomModalities"]["hlip"] = ["HLIP", "127.0.0.1", port]
    pacs.config.write_text(json.dumps(config))
    pacs.start()
    try:
        lp = listener_factory("--results-to", pacs.dimse_url, quiet_s=1.0, port=port).start()
        pacs.upload(sorted(study.rglob("*.dcm")))
        auth = (USER, PASSWORD)
        found = requests.post(f"{pacs.http}/tools/lookup", data=uid, auth=auth, timeout=30).json()
        orthanc_id = next(r["ID"] for r in found if r["Type"] == "Study")
        sent = requests.post(f"{pacs.http}/modalities/hlip/store", json={"Resources": [orthanc_id]}, auth=auth,
                             timeout=120)
        assert sent.ok, sent.text
        row = next(r for r in wait_done(lp.index, {uid}) if r["study_uid"] == uid)
        assert row["status"] == "done" and row["priority"] == "STAT" and row["finding"] == "haemorrhage"
        deadline = time.time() + 120
        while time.time() < deadline and "results sent" not in lp.log.read_text():
            assert "results not sent" not in lp.log.read_text(), lp.log.read_text()[-2000:]
            time.sleep(0.3)
        series = requests.get(f"{pacs.http}/studies/{orthanc_id}/series", auth=auth, timeout=30).json()
        modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
        # the report (SR) and the haemorrhage's relevance map (a Parametric Map) in the same study
        sources = len([p for p in study.iterdir() if p.is_dir()])
        assert modalities.count("SR") == 1 and len(series) == sources + 2, modalities
        assert index_uids(lp.index) == [uid]
    finally:
        pacs.stop()
