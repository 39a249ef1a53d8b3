"""``python -m training.prepare ARCHIVE --out CACHE --recipe NAME --reports FILE``: raw studies -> training cache.

Each study is found and read by the engine (``hlip_engine.discover`` / ``load_study``) and every scan is
preprocessed once with the engine's recipe (the same code the model uses at inference), then cached as
``CACHE/<study_id>/<series>/img.pt`` — uint8 [D, H, W] holding round(255 * x) of the [0, 1] image like
the official cache, or float16 — and listed in ``CACHE/manifest.json`` in the official layout.
Studies that cannot be used (unreadable, no report, nothing left after preprocessing) are skipped and
listed with the reason in ``CACHE/skipped.json``. Re-running continues where it stopped: finished studies
are kept, and every file (tensors, manifest) is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hlip_engine.atomic import atomic_write, atomic_write_text

from .data import IMAGE_MEAN, IMAGE_STD, split_sentences
from .flip import lr_axis_of_view
from .reports import keep_sections, match_report, read_reports

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "x") -> str:
    name = _UNSAFE.sub("_", text).strip("._")
    return name[:80] or fallback


def _save_tensor(x, path: Path) -> None:
    import torch

    with atomic_write(path) as tmp:
        torch.save(x.clone(), tmp)


def series_names(study, scan_indices: list[int], labels: list[str] | None = None) -> list[str]:
    """One unique folder name per model scan: '<number>_<description [window]>', then '_2', '_3' on clashes."""
    names, seen = [], {}
    for k, i in enumerate(scan_indices):
        scan = study.scans[i]
        number = f"{scan.series_number:03d}" if scan.series_number is not None else f"s{i:03d}"
        label = labels[k] if labels and len(labels) == len(scan_indices) else scan.description
        base = safe_name(f"{number}_{label}" if label else number)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def prepare_one(job: dict) -> dict:
    """Worker: load, preprocess and cache one study. Returns {'id', 'entry'} or {'id', 'skip'}."""
    import torch

    torch.set_num_threads(1)
    from hlip_engine.io import load_study  # (not ``hlip_engine.preprocessing``: that name is also the module)
    from hlip_engine.preprocessing import preprocess

    sid, out = job["id"], Path(job["out"])
    try:
        study = load_study(job["source"])
        prepared = preprocess(study, job["recipe"], **job["options"])
    except Exception as e:  # skip-and-report: one bad study never stops the archive
        return {"id": sid, "skip": f"{job['source']}: {type(e).__name__}: {e}"}
    tensor = prepared.tensor  # [N, 1, D, H, W], normalised
    if tensor.shape[0] == 0:
        return {"id": sid, "skip": f"{job['source']}: no usable scan after preprocessing"}
    indices = [int(i) for i in prepared.scan_indices]
    series = {}
    lesions = None
    if job.get("lesions"):  # known lesion centres (training.lesions): placed on each model scan's grid
        from .lesions import lesion_entries

        lesions = lesion_entries(study, prepared, job["lesions"])
    geometry = list(prepared.geometry) or [None] * len(indices)
    for k, (name, i, x) in enumerate(zip(series_names(study, indices, list(prepared.labels)), indices, tensor)):
        x01 = (torch.as_tensor(x[0]).float() * IMAGE_STD + IMAGE_MEAN).clamp_(0, 1)  # back to [0, 1]
        stored = (x01 * 255).round_().to(torch.uint8) if job["dtype"] == "uint8" else x01.half()
        _save_tensor(stored, out / sid / name / "img.pt")
        scan = study.scans[i]
        series[name] = {"num_slices": int(x01.shape[0]), "view": scan.orientation, "modality": scan.modality,
                        "description": scan.description, "series_uid": scan.series_uid, "dtype": job["dtype"]}
        if geometry[k] is not None:  # the patient's left-right axis of the cached [D, H, W] tensor (--flip-lr)
            series[name]["lr_axis"] = lr_axis_of_view(scan.direction, geometry[k].view.axes)
        if lesions is not None:
            series[name]["lesions"] = lesions[k]
    report = job["report"]
    sentences = split_sentences(report) if isinstance(report, str) else [str(s) for s in report]
    entry = {"series": series, "report": sentences, "modality": study.modality or study.scans[0].modality,
             "study_uid": study.uid, "source": job["source"],
             "skipped_scans": [[str(a), str(b)] for a, b in study.skipped]}
    return {"id": sid, "entry": entry}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", help="folder of studies (DICOM folders, NIfTI files or HLIP tensors)")
    p.add_argument("--out", required=True, help="cache folder: manifest.json, skipped.json, <study>/<series>/img.pt")
    p.add_argument("--recipe", required=True, help="engine preprocessing recipe: brain-mri, chest-ct, head-ct")
    p.add_argument("--reports", required=True, help="JSON or CSV mapping study uid or folder name -> report text")
    p.add_argument("--sections", nargs="+", default=[], metavar="NAME",
                   help="keep only these report sections (e.g. FINDINGS IMPRESSION, as CT-RATE trains); "
                        "reports without section headers are kept whole")
    p.add_argument("--report-id-column", default="", help="CSV: column holding the study uid / folder")
    p.add_argument("--report-text-column", default="", help="CSV: column holding the report")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe option, e.g. slices=48 size=256 crop=224 (repeatable)")
    p.add_argument("--dtype", choices=["uint8", "float16"], default="uint8",
                   help="cache precision: uint8 like the official cache (4x smaller) or float16")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="parallel processes (0 = in this process)")
    p.add_argument("--lesions", default="", metavar="FILE",
                   help="JSON {study_uid: [{centre_lps, radius_mm}]} of known lesions (python -m training.lesions); "
                        "stored per cached scan on its model grid, for pretrain --lesion-guidance")
    p.add_argument("--flush-every", type=int, default=20, help="rewrite the manifest every N finished studies")
    return p


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"training.prepare: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    from tqdm import tqdm

    from hlip_engine.io import discover_with_problems

    archive, out = Path(args.archive), Path(args.out)
    if not archive.exists():
        raise FileNotFoundError(f"{archive}: archive not found")
    options = parse_options(args.option)
    reports = read_reports(args.reports, id_column=args.report_id_column, text_column=args.report_text_column)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path, skipped_path = out / "manifest.json", out / "skipped.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    skipped: dict[str, str] = {}
    info = {"recipe": args.recipe, "options": options, "dtype": args.dtype}
    lesions = {}
    if args.lesions:
        lesions = json.loads(Path(args.lesions).read_text())
        info["lesions"] = Path(args.lesions).name
    sections = [s.upper() for s in args.sections]
    if sections:
        info["sections"] = sections
    info_path = out / "prepare.json"
    if info_path.is_file() and manifest:
        before = json.loads(info_path.read_text())
        if before != info:
            raise ValueError(f"{out}: cache was made with {before}; resume needs the same recipe/options/dtype")
    atomic_write_text(info_path, json.dumps(info, indent=1))

    refs, problems = discover_with_problems(archive, progress=True)
    for item, reason in problems:  # files that belong to no study (unreadable, not DICOM, DICOMDIR)
        skipped[str(item)] = f"not part of any study: {reason}"
    jobs, used = [], set(manifest)
    for ref in refs:
        folder = Path(ref.source)
        inside = folder.is_relative_to(archive)
        rel = str(folder.relative_to(archive)) if inside else folder.name
        # the study's folder may be a level above the one discover names (one series per folder)
        ancestors = [p.name for p in folder.parents if inside and p.is_relative_to(archive) and p != archive]
        key, report = match_report(reports, [ref.uid, folder.name, folder.stem, rel, *ancestors])
        sid = safe_name(key or ref.uid or folder.name, "study")
        if sid in manifest:
            continue  # finished in an earlier run
        if report is None or not report:
            skipped[ref.uid or str(folder)] = f"{ref.source}: no report in {args.reports}"
            continue
        if sections:
            report = keep_sections(report, sections)
            if not report:
                skipped[ref.uid or str(folder)] = (f"{ref.source}: its report in {args.reports} has none of the "
                                                   f"sections {' '.join(sections)}")
                continue
        if sid in used:
            skipped[ref.uid] = f"{ref.source}: study id {sid!r} already used by another study"
            continue
        used.add(sid)
        jobs.append({"id": sid, "source": ref.source, "recipe": args.recipe, "options": options,
                     "report": report, "out": str(out), "dtype": args.dtype,
                     "lesions": lesions.get(ref.uid)})

    def flush() -> None:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        atomic_write_text(skipped_path, json.dumps(skipped, indent=1))

    done = 0
    bar = tqdm(total=len(jobs), desc="prepare", unit="study")
    pool = None
    if args.workers > 0 and len(jobs) > 1:
        # spawn: a clean interpreter per worker (forking a process that holds torch threads can hang)
        pool = ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"))
    results = pool.map(prepare_one, jobs, chunksize=1) if pool else map(prepare_one, jobs)
    new_skips = 0
    for result in results:
        if "skip" in result:
            skipped[result["id"]] = result["skip"]
            new_skips += 1
        else:
            manifest[result["id"]] = result["entry"]
        done += 1
        bar.update()
        if done % args.flush_every == 0:
            flush()
    bar.close()
    if pool:
        pool.shutdown()
    flush()
    print(f"{len(manifest)} studies in {manifest_path}; {len(skipped)} skipped ({new_skips} failed while "
          f"preprocessing); reasons: {skipped_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
