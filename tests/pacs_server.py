"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests, started and stopped here.

Each server runs on free loopback ports (HTTP for DICOMweb, DICOM for DIMSE) with a temporary storage folder,
HTTP basic auth (user ``hlip``), ``DicomCheckCalledAet`` on, and our AE title ``HLIPX`` registered with a
port of our own for C-MOVE. ``TCP_NODELAY=1`` in Orthanc's environment turns Nagle off in DCMTK, as a
production PACS would have it (without it every C-GET sub-operation waits ~40 ms for a delayed ACK).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "hlip", "s3cret-pacs"
AET = "ORTHANC"
CT_STUDY_UID = "1.2.826.0.1.3680043.8.498.17000000000000000000000000000000300"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``start``/``stop``/``kill`` keep the storage so a restart serves the same studies."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.http_port, self.dicom_port, self.move_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "HLIP-TEST", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomCheckCalledAet": True, "DicomModalities": {"hlipx": ["HLIPX", "127.0.0.1", self.move_port]},
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpCompressionEnabled": False, "StorageCompression": False, "StableAge": 1, "SaveJobs": False,
            "LimitFindResults": 0, "LimitFindInstances": 0, "OverwriteInstances": True, "HttpTimeout": 60,
        }, indent=1))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http}/dicom-web"

    @property
    def dimse_url(self) -> str:
        return f"dicom://{AET}@127.0.0.1:{self.dicom_port}"

    def url(self, protocol: str) -> str:
        return self.dicomweb_url if protocol == "dicomweb" else self.dimse_url

    def start(self, timeout: float = 30.0) -> Orthanc:
        env = dict(os.environ, TCP_NODELAY="1")
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.http}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                        return self
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as a crashed PACS would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def upload(self, files) -> int:
        """Store DICOM files through the REST API; returns how many."""
        n = 0
        with requests.Session() as s:
            s.auth = (USER, PASSWORD)
            for f in files:
                r = s.post(f"{self.http}/instances", data=Path(f).read_bytes(), timeout=60)
                r.raise_for_status()
                n += 1
        return n


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.dcm"))


def write_ct(folder: Path, slices: int = 300, size: int = 256, seed: int = 5) -> Path:
    """A one-series CT of ``slices`` slices of ``size``^2, integer HU, written with the engine's DICOM writer."""
    from hlip_engine.io import write_dicom_series
    from hlip_engine.study import PatientInfo, Scan

    rng = np.random.default_rng(seed)
    vol = rng.integers(-1000, 2000, size=(slices, size, size)).astype(np.float32)
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    affine[:3, 3] = (-90.0, -100.0, -180.0)
    scan = Scan(vol, affine, modality="CT", description="CT BODY 1.25",
                series_uid="1.2.826.0.1.3680043.8.498.17000000000000000000000000000000301")
    write_dicom_series(scan, folder, study_uid=CT_STUDY_UID, series_number=2, study_description="CT CHEST ABDOMEN",
                       study_date="20230615", patient=PatientInfo(name="BIG^CT", id="CT300", sex="M"))
    return folder
