"""Fixtures of the PACS tests: a real Orthanc (DICOMweb + DIMSE) on free loopback ports, see pacs_server.py."""
from __future__ import annotations

import shutil

import pytest
from pacs_server import CT_STUDY_UID, PASSWORD, USER, Orthanc, dicom_files, write_ct


@pytest.fixture(autouse=True)
def _pacs_env(monkeypatch, tmp_path):
    """Credentials for the test Orthanc from the environment; config and cache in temporary folders."""
    monkeypatch.setenv("HLIP_PACS_USERNAME", USER)
    monkeypatch.setenv("HLIP_PACS_PASSWORD", PASSWORD)
    monkeypatch.setenv("HLIP_NAPARI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HLIP_NAPARI_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("HLIP_PACS_TOKEN", "HLIP_PACS_NODES", "HLIP_PACS_CACHE", "HLIP_PACS_CACHE_GB"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> dict:
    """Local copies of what the PACS holds: two phantom studies, pydicom test files, a 300-slice CT."""
    from pydicom.data import get_testdata_file

    from hlip_engine.demo import make_studies

    root = tmp_path_factory.mktemp("library")
    records = make_studies(root / "phantoms", 2, seed=11)
    extra = root / "pydicom"
    extra.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm"):
        shutil.copy(get_testdata_file(name), extra / name)
    ct = write_ct(root / "ct300")
    return {"root": root, "phantoms": records, "pydicom": extra, "ct": ct, "ct_uid": CT_STUDY_UID}


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, library):
    """One Orthanc for the session, holding the whole library."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        for rec in library["phantoms"]:
            server.upload(dicom_files(rec["path"]))
        server.upload(dicom_files(library["pydicom"]))
        server.upload(dicom_files(library["ct"]))
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_orthanc(tmp_path, library):
    """An Orthanc of this test's own (it may be killed), holding the 300-slice CT only."""
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload(dicom_files(library["ct"]))
        yield server
    finally:
        server.stop()
