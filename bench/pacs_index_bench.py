"""`hlip index build` from a PACS: studies per second over DICOMweb and DIMSE against the same build from a local
folder, with a real Orthanc on loopback (started and stopped here).

The same phantom studies (``hlip_engine.demo.make_studies``: brain MR and head CT with several series each) are
written to a folder and stored in Orthanc; each source is then indexed into a fresh index with an empty study
cache (the PACS builds drop every study from it again, as without ``--keep``). The rate is the build's own:
studies indexed / wall seconds of the whole build (finding the studies, loading the model, retrieving, loading,
preprocessing, encoding, storing and publishing); ``stream_rate`` is that of the loop alone (studies retrieved,
loaded, embedded and stored, or skipped, per second between the build's "found" and "writing" messages).
Best of ``--repeat`` runs. The PACS indexes are checked against
the local one (same studies, embeddings within 1e-5).

    .venv/bin/python bench/pacs_index_bench.py [--studies 24] [--model PATH|tiny] [--workers 2] [--repeat 2] [--out f.json]

``--model tiny`` takes a random ``hlip_tiny`` (encoding costs nearly nothing, so the figures show the I/O:
retrieval, loading, preprocessing); the default is the demo model the project ships.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import PASSWORD, REPO, USER, start_orthanc, upload  # the same Orthanc set-up as pacs_bench

ROOT = REPO

DEMO_MODEL = ROOT / "hlip_engine" / "weights" / "hlip_demo.safetensors"


def _model(choice: str, root: Path) -> Path:
    if choice != "tiny":
        return Path(choice)
    import torch

    from hlip_engine.model import create_model

    torch.manual_seed(0)
    return Path(create_model("hlip_tiny").save(root / "tiny.safetensors"))


def _compare(index_dir: Path, local_dir: Path) -> dict:
    from hlip_engine.index import StudyIndex

    index, local = StudyIndex.open(index_dir), StudyIndex.open(local_dir)
    metas = index.metadata(np.arange(len(index)))
    uids = sorted(m["study_uid"] for m in metas)
    local_uids = sorted(m["study_uid"] for m in local.metadata(np.arange(len(local))))
    diff = max((float(np.abs(index.vectors([m["id"]])[0] - local.vectors([local.find(study_uid=m["study_uid"])])[0]).max())
                for m in metas), default=0.0)
    return {"same_studies": uids == local_uids, "max_embedding_diff": diff,
            "node_recorded": all(m.get("node") for m in metas)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=24, help="phantom studies (default 24)")
    ap.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint, or 'tiny' (default: the demo model)")
    ap.add_argument("--workers", type=int, default=2, help="build worker processes (default 2, as the CLI)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="runs per source, the best is kept (default 2)")
    ap.add_argument("--sources", default="local,dicomweb,dimse", help="which builds (default all three)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    os.environ["HLIP_PACS_USERNAME"], os.environ["HLIP_PACS_PASSWORD"] = USER, PASSWORD
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hlip_engine.demo import make_studies
    from hlip_engine.index.embed_pipeline import build_library, build_node

    root = Path(tempfile.mkdtemp(prefix="pacs-index-bench-"))
    proc = None
    try:
        t0 = time.perf_counter()
        records = make_studies(root / "library", args.studies, seed=3)
        files = sorted((root / "library").rglob("*.dcm"))
        nbytes = sum(f.stat().st_size for f in files)
        proc, http, dicom = start_orthanc(root)
        upload(http, files)
        print(f"{len(records)} phantom studies ({len(files)} files, {nbytes / 1e6:.0f} MB) written and stored in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        model = _model(args.model, root)
        sources = {"local": str(root / "library"), "dicomweb": f"http://127.0.0.1:{http}/dicom-web",
                   "dimse": f"dicom://ORTHANC@127.0.0.1:{dicom}"}
        options = dict(workers=args.workers, batch_size=args.batch_size, progress=False)
        res = {"studies": len(records), "files": len(files), "mb": round(nbytes / 1e6, 1), "model": model.name,
               "workers": args.workers, "batch_size": args.batch_size, "repeat": args.repeat, "cpus": os.cpu_count()}
        last = {}
        sources = {k: v for k, v in sources.items() if k in args.sources.split(",")}
        for name, source in sources.items():
            runs = []
            for i in range(args.repeat):
                ix, cache = root / f"{name}-{i}.index", root / f"{name}-{i}.cache"
                marks = {}

                def log(msg, marks=marks):  # the build says when it starts embedding and when it publishes
                    if "studies found" in msg:
                        marks["stream_from"] = time.perf_counter()
                    elif msg.startswith("writing ") and "stream_to" not in marks:
                        marks["stream_to"] = time.perf_counter()

                if name == "local":
                    report = build_library(source, model, ix, **options, log=log)
                else:
                    report = build_node(source, model, ix, cache=cache, **options, log=log)
                left = sum(1 for _ in cache.rglob("*.dcm")) if cache.exists() else 0
                stream_s = marks["stream_to"] - marks["stream_from"]
                done = report.indexed + len(report.skipped)
                runs.append({"seconds": round(report.seconds, 2), "indexed": report.indexed,
                             "skipped": len(report.skipped), "rate": round(report.rate, 3),
                             "stream_seconds": round(stream_s, 2), "stream_rate": round(done / stream_s, 3),
                             "dcm_left_in_cache": left, "skipped_reasons": [r for _p, r in report.skipped]})
                last[name] = ix
                print(f"{name:9s} run {i + 1}: {report.indexed} indexed, {len(report.skipped)} skipped in "
                      f"{report.seconds:.1f} s = {report.rate:.2f} studies/s (retrieve/load/embed loop "
                      f"{done / stream_s:.2f} studies/s)", file=sys.stderr)
            bestrun = max(runs, key=lambda r: r["rate"])
            res[name] = {**bestrun, "runs": runs}
        for name in ("dicomweb", "dimse"):
            if name not in res or "local" not in res:
                continue
            res[name]["vs_local"] = round(res[name]["rate"] / res["local"]["rate"], 3) if res["local"]["rate"] else None
            res[name]["stream_vs_local"] = round(res[name]["stream_rate"] / res["local"]["stream_rate"], 3)
            res[name].update(_compare(last[name], last["local"]))
        print(json.dumps(res, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except Exception:  # noqa: BLE001
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
