"""What several bench scripts share: timing on a GPU or CPU, the peak-FLOP table behind MFU figures, the
options of the phantom-lesion benchmarks, the relevance peak as the plugin takes it, and a throwaway Orthanc.

Scripts run as ``python bench/NAME.py``, so this folder is on ``sys.path`` and ``import _common`` works.
Importing it also puts the repository root first on ``sys.path``: a script then runs from a checkout whose
package is not installed (the GPU suite runs that way, with a bare ``python3``). Heavy packages (torch,
requests) are imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# --- timing ---------------------------------------------------------------------------------------------
def sync(device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, repeat: int) -> float:
    """Median seconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# dense bf16 TFLOP/s by card name (SXM parts), the denominator of MFU
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device, given: float) -> float | None:
    """``given`` when set, else the card's peak from :data:`PEAK_BF16_TFLOPS` (None on CPU or an unknown card)."""
    if given:
        return given
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# --- phantom-lesion benchmarks (relevance_pointing, relevance_methods, relevance_variants) -----------------
def library_parser(description: str) -> argparse.ArgumentParser:
    """The options every phantom-lesion benchmark shares: which model, which library (seed, size), where."""
    from hlip_engine.demo.showcase import DEMO_MODEL

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("demo-output/quality"), help="where libraries are kept")
    return ap


def peak_of(tokens, prepared, study, scan_volumes, centre_of_mass=True):
    """World position (LPS mm) of ``Relevance.peak()`` for these tokens: the hot spot on the most relevant
    source scan, where the plugin jumps."""
    from hlip_engine.relevance import Relevance

    rel = Relevance(tokens=tokens, prompt="", logit=0.0, patch_size=(1, 1, 1), model_grid=(1, 1, 1),
                    scan_indices=list(prepared.scan_indices))
    rel.volumes, rel.volume_scans = scan_volumes(tokens, prepared)
    k, voxel = rel.peak(centre_of_mass)
    return study.scans[k].world(voxel)


# --- a throwaway Orthanc on loopback (pacs_bench, pacs_index_bench) ------------------------------------
ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "bench", "bench-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_orthanc(root: Path) -> tuple[subprocess.Popen, int, int]:
    """Start Debian's Orthanc (+ its DICOMweb plugin) with its database under ``root``, Nagle off
    (``TCP_NODELAY=1``, as a PACS should be set up); returns the process, its HTTP port and its DICOM port."""
    import requests

    http, dicom = free_port(), free_port()
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps({
        "Name": "BENCH", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "DicomCheckCalledAet": True,
        "DicomModalities": {"hlipx": ["HLIPX", "127.0.0.1", free_port()]}, "Plugins": [PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpCompressionEnabled": False,
        "StorageCompression": False, "SaveJobs": False, "LimitFindResults": 0, "LimitFindInstances": 0}))
    log = open(root / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TCP_NODELAY="1"), start_new_session=True)
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{http}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return proc, http, dicom
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("Orthanc did not start")


def upload(http: int, files) -> None:
    """Store DICOM files in the Orthanc listening on ``http`` (its REST API)."""
    import requests

    with requests.Session() as s:
        s.auth = (USER, PASSWORD)
        for f in files:
            s.post(f"http://127.0.0.1:{http}/instances", data=Path(f).read_bytes(), timeout=120).raise_for_status()
