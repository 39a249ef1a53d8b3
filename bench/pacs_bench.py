"""PACS retrieval and query speed against a real Orthanc on loopback (started and stopped here).

- Retrieve a 512 x 512 x 300 CT over DICOMweb (WADO-RS) vs ``curl`` downloading the same multipart body;
- over DIMSE (C-GET) vs dcmtk's ``getscu`` (the two take turns, round by round; wall and client CPU time);
- query latency for a find over 1,000 studies (all of them, and a filtered find), both protocols.

    .venv/bin/python bench/pacs_bench.py [--slices 300] [--size 512] [--studies 1000] [--repeat 3] [--out f.json]

Orthanc runs with ``TCP_NODELAY=1`` (Nagle off in DCMTK, as a PACS should be set up); ``getscu`` is timed with
and without it. Best of ``--repeat`` runs each; every retrieve starts from an empty cache / folder.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import PASSWORD, USER, start_orthanc, upload  # the Orthanc set-up pacs_index_bench shares

STUDY = "1.2.826.0.1.3680043.8.498.18000000000000000000000000000000512"


def write_ct(folder: Path, slices: int, size: int) -> list[Path]:
    from hlip_engine.io import write_dicom_series
    from hlip_engine.study import Scan

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                          indexing="ij", sparse=True)
    vol = np.where(x**2 + y**2 < 0.8, 40.0, -1000.0) + rng.normal(0, 10, (slices, size, size))
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    return write_dicom_series(Scan(np.round(vol).astype(np.float32), affine, modality="CT", description="BENCH CT"),
                              folder, study_uid=STUDY, series_number=1, study_description="BENCH CT 512",
                              study_date="20240101")


def write_many_studies(folder: Path, n: int) -> list[Path]:
    """``n`` one-image studies (8 x 8), varied dates and modalities: what a find walks through."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.PatientName = f"P{i:05d}", f"BENCH^{i:05d}"
        ds.StudyDate = f"2024{1 + i % 12:02d}{1 + i % 28:02d}"
        ds.Modality = ("CT", "MR", "PT")[i % 3]
        ds.StudyDescription = f"BENCH STUDY {i % 10}"
        ds.AccessionNumber = f"ACC{i:06d}"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = bytes(64)
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def best(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_s(children: bool) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def best_interleaved(funcs: dict, repeat: int) -> dict:
    """Best wall time and best client CPU time (user + system) of each ``{name: (func, in_child)}``, the
    functions taking turns within each round, so that a machine shared with other work loads them alike."""
    out = {name: {"wall": [], "cpu": []} for name in funcs}
    for _ in range(repeat):
        for name, (func, child) in funcs.items():
            c0, t0 = cpu_s(child), time.perf_counter()
            func()
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(cpu_s(child) - c0)
    return {name: {k: min(v) for k, v in d.items()} for name, d in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    os.environ["HLIP_PACS_USERNAME"], os.environ["HLIP_PACS_PASSWORD"] = USER, PASSWORD
    from hlip_engine.pacs import StudyCache, connect

    root = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    proc = None
    try:
        t0 = time.perf_counter()
        files = write_ct(root / "ct", args.slices, args.size)
        nbytes = sum(f.stat().st_size for f in files)
        proc, http, dicom = start_orthanc(root)
        upload(http, files)
        print(f"CT {args.slices} x {args.size}^2 ({nbytes / 1e6:.0f} MB) written and stored in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        web = f"http://127.0.0.1:{http}/dicom-web"
        dimse = f"dicom://ORTHANC@127.0.0.1:{dicom}"
        res = {"ct": {"slices": args.slices, "size": args.size, "mb": round(nbytes / 1e6, 1)}}

        def ours(url):
            def run():
                cache = StudyCache(root / "cache")
                cache.clear()
                connect(url, timeout=120).retrieve(STUDY, cache)
                assert sum(1 for _ in cache.study_dir(STUDY).rglob("*.dcm")) == args.slices
            return run

        def curl():
            subprocess.run(["curl", "-sSf", "-u", f"{USER}:{PASSWORD}", "-o", str(root / "curl.bin"), "-H",
                            'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
                            f"{web}/studies/{STUDY}"], check=True)

        def getscu(nodelay: bool, pdu: int | None = None):
            def run():
                out = root / "getscu"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                env = dict(os.environ, TCP_NODELAY="1") if nodelay else {k: v for k, v in os.environ.items()
                                                                          if k != "TCP_NODELAY"}
                subprocess.run(["getscu", *(["--max-pdu", str(pdu)] if pdu else []), "-aet", "HLIPX", "-aec", "ORTHANC",
                                "127.0.0.1", str(dicom),
                                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}", "-od", str(out)],
                               check=True, env=env, capture_output=True)
                assert len(list(out.iterdir())) == args.slices
            return run

        r = args.repeat
        res["dicomweb_s"] = best(ours(web), r)
        res["curl_s"] = best(curl, r)
        res["dicomweb_vs_curl"] = res["dicomweb_s"] / res["curl_s"]
        ours(dimse)()  # warm: imports, Orthanc's caches (getscu's first run below warms nothing of ours)
        # getscu proposes 16 kB PDUs by default; we propose unlimited (Orthanc then sends 128 kB ones): getscu
        # with --max-pdu 131072 gets the same, as a second reference
        t = best_interleaved({"dimse": (ours(dimse), False), "getscu": (getscu(True), True),
                              "getscu_128k": (getscu(True, 131072), True)}, r)
        res["dimse_cget_s"], res["dimse_cget_cpu_s"] = t["dimse"]["wall"], t["dimse"]["cpu"]
        res["getscu_nodelay_s"], res["getscu_cpu_s"] = t["getscu"]["wall"], t["getscu"]["cpu"]
        res["getscu_maxpdu128k_s"] = t["getscu_128k"]["wall"]
        res["dimse_vs_getscu_maxpdu128k"] = res["dimse_cget_s"] / res["getscu_maxpdu128k_s"]
        res["getscu_default_s"] = best(getscu(False), 1)
        res["dimse_vs_getscu"] = res["dimse_cget_s"] / res["getscu_nodelay_s"]
        res["load_avg_1min"] = os.getloadavg()[0]
        res["cpus"] = os.cpu_count()

        # --- find latency over many studies ---
        t0 = time.perf_counter()
        upload(http, write_many_studies(root / "many", args.studies))
        print(f"{args.studies} studies stored in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for name, url in (("dicomweb", web), ("dimse", dimse)):
            client = connect(url, timeout=120)
            n_all = len(client.find_studies())
            assert n_all == args.studies + 1, n_all
            lat_all = [best(lambda c=client: c.find_studies(), 1) for _ in range(5)]
            n_f = len(client.find_studies(modality="CT", date_from="2024-03-01", date_to="2024-06-30"))
            lat_f = [best(lambda c=client: c.find_studies(modality="CT", date_from="2024-03-01",
                                                          date_to="2024-06-30"), 1) for _ in range(5)]
            res[f"find_all_{name}_ms"] = statistics.median(lat_all) * 1000
            res[f"find_filtered_{name}_ms"] = statistics.median(lat_f) * 1000
            res[f"find_filtered_{name}_hits"] = n_f
            client.close()
        res["find_studies_on_server"] = args.studies + 1
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=1))
        mb = nbytes / 1e6
        print(f"\nretrieve {args.slices} x {args.size}^2 CT ({mb:.0f} MB) from Orthanc on loopback, best of {r}:\n"
              f"  DICOMweb (hlip)   {res['dicomweb_s']:.2f} s  {mb / res['dicomweb_s']:.0f} MB/s\n"
              f"  curl WADO-RS      {res['curl_s']:.2f} s  -> hlip/curl = {res['dicomweb_vs_curl']:.2f} x\n"
              f"  DIMSE C-GET (hlip) {res['dimse_cget_s']:.2f} s  {mb / res['dimse_cget_s']:.0f} MB/s, "
              f"client CPU {res['dimse_cget_cpu_s']:.2f} s\n"
              f"  getscu (TCP_NODELAY=1) {res['getscu_nodelay_s']:.2f} s, client CPU {res['getscu_cpu_s']:.2f} s"
              f" -> hlip/getscu = {res['dimse_vs_getscu']:.2f} x   (getscu --max-pdu 131072: "
              f"{res['getscu_maxpdu128k_s']:.2f} s; getscu default: {res['getscu_default_s']:.2f} s;"
              f" taking turns, load average {res['load_avg_1min']:.1f} on {res['cpus']} CPUs)\n"
              f"find over {args.studies + 1} studies (median of 5): all {res['find_all_dicomweb_ms']:.0f} ms "
              f"DICOMweb / {res['find_all_dimse_ms']:.0f} ms DIMSE; filtered "
              f"{res['find_filtered_dicomweb_ms']:.0f} / {res['find_filtered_dimse_ms']:.0f} ms", file=sys.stderr)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
