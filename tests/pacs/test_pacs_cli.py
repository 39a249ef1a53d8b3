"""``hlip pacs echo | find | get | cache`` against the real Orthanc: output, exit codes, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pacs_server import CT_STUDY_UID, PASSWORD, USER, free_port

from hlip_engine.cli import main


def hlip(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["pacs", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("protocol", ("dicomweb", "dimse"))
def test_echo_find_get_cache(orthanc, library, tmp_path, capsys, protocol):
    node = orthanc.url(protocol)
    rc, out, _ = hlip(capsys, "echo", node)
    assert rc == 0 and "answers" in out

    rc, out, err = hlip(capsys, "find", node, "--modality", "CT", "--date-from", "2023-01-01", "--date-to",
                      "2023-12-31", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["study_uid"] for r in rows] == [CT_STUDY_UID]
    assert rows[0] == {"study_uid": CT_STUDY_UID, "date": "20230615", "modality": "CT",
                       "description": "CT CHEST ABDOMEN", "series": 1, "instances": 300}

    a = library["phantoms"][0]
    rc, out, _ = hlip(capsys, "find", node, "--description", a["description"])
    assert rc == 0 and a["uid"] in out and "PH0" not in out and "PHANTOM^" not in out  # no identifiers
    rc, out, _ = hlip(capsys, "find", node, "--patient-id", "CT300", "--show-patient")
    assert rc == 0 and "CT300" in out and "BIG^CT" in out

    cache = tmp_path / "cache"
    rc, out, _ = hlip(capsys, "get", node, a["uid"], "--cache", str(cache), "--json")
    assert rc == 0 and json.loads(out) == {"path": str(cache / a["uid"])}
    rc, out, _ = hlip(capsys, "get", node, a["uid"], "--cache", str(cache))
    assert rc == 0 and out.strip() == str(cache / a["uid"])

    rc, out, _ = hlip(capsys, "cache", "--cache", str(cache), "--json")
    listing = json.loads(out)
    assert [s["study_uid"] for s in listing["studies"]] == [a["uid"]] and listing["studies"][0]["complete"]
    rc, out, _ = hlip(capsys, "cache", "--cache", str(cache))
    assert rc == 0 and "1 studies" in out and a["uid"] in out
    rc, out, _ = hlip(capsys, "cache", "--cache", str(cache), "--clear")
    assert rc == 0 and "removed 1 studies" in out and not (cache / a["uid"]).exists()


def test_errors_are_one_line_and_non_zero(orthanc, capsys, monkeypatch):
    down = free_port()
    cases = [
        (["echo", orthanc.dimse_url.replace("ORTHANC@", "ELSEWHERE@")], "called AE title 'ELSEWHERE' not recognised"),
        (["echo", f"dicom://ORTHANC@127.0.0.1:{down}"], "connection refused"),
        (["find", f"http://127.0.0.1:{down}/dicom-web"], "connection refused"),
        (["find", orthanc.http + "/nowhere"], "HTTP 404"),
        (["get", orthanc.dicomweb_url, "1.2.3.999"], "not found"),
        (["get", orthanc.dicomweb_url, "../etc"], "not a DICOM UID"),
        (["find", "nosuchnode"], "unknown PACS node"),
        (["find", orthanc.dicomweb_url, "--date-from", "2024-02-30"], "not a calendar date"),
    ]
    for argv, message in cases:
        rc, out, err = hlip(capsys, *argv)
        assert rc != 0, argv
        assert message in err and err.count("\n") == 1 and err.startswith(f"hlip pacs {argv[0]}: error: "), err
    monkeypatch.setenv("HLIP_PACS_PASSWORD", "not-it")
    rc, _, err = hlip(capsys, "find", orthanc.dicomweb_url)
    assert rc == 1 and "HTTP 401" in err and "not-it" not in err and PASSWORD not in err


def test_a_real_process_prints_no_traceback(orthanc):
    env = {"HLIP_PACS_USERNAME": USER, "HLIP_PACS_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin",
           "HLIP_NAPARI_CONFIG_DIR": str(orthanc.root / "cfg")}
    bad = subprocess.run([sys.executable, "-m", "hlip_engine.cli", "pacs", "get",
                          orthanc.dimse_url.replace("ORTHANC@", "WRONG@"), CT_STUDY_UID],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "not recognised" in bad.stderr
    assert bad.stdout == ""
