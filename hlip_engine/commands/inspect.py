"""Show the study tree of a path: the scans kept (series, description, modality, shape, spacing, orientation)
and every item skipped with its reason. A path holding several studies prints one block per study.

Patient identifiers are never printed.

examples:
  hlip inspect /data/exports/CT_HEAD_2024
  hlip inspect /data/archive --json > tree.json
"""
from __future__ import annotations

import json
import sys

NAME = "inspect"
HELP = "show the scans a study path holds and what was skipped, with reasons"


def add_arguments(parser) -> None:
    parser.add_argument("path", help="DICOM folder (any depth, DICOMDIR or not), NIfTI file/folder, or HLIP tensors")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of studies) instead of text")
    parser.add_argument("--min-slices", type=int, default=3, help="fewer images than this is not a scan (3)")
    parser.add_argument("--keep-secondary-capture", action="store_true",
                        help="load secondary-capture series as scans instead of skipping them")
    parser.add_argument("--keep-localizers", action="store_true", help="load localizers / scouts as scans")


def _scan_record(index: int, scan) -> dict:
    return {
        "index": index,
        "series_number": scan.series_number,
        "series_uid": scan.series_uid,
        "description": scan.description,
        "kind": describe_kind(scan.attributes),  # what a 4-D or MOSAIC series became, "" for a plain scan
        "modality": scan.modality,
        "shape": list(scan.shape),  # (slices, rows, columns)
        "spacing_mm": [round(x, 4) for x in scan.spacing],  # (slice, row, column)
        "orientation": scan.orientation,
        "origin_lps_mm": [round(float(x), 3) for x in scan.origin],
        "warnings": list(scan.attributes.get("warnings", [])),
        "attributes": {k: v for k, v in scan.attributes.items() if k != "warnings"},
        "source": scan.source,
    }


def describe_kind(attributes: dict) -> str:
    """What a scan made from a 4-D series or a MOSAIC is, in words: "DWI b=1000 (trace of 64 directions)",
    "echo 2 of 3", "fMRI mean of 180 volumes, every 2 s"; "" for a plain volume."""
    kind = str(attributes.get("ScanKind", "") or "")
    if attributes.get("NumberOfTimePoints") and attributes.get("TimeStepSeconds"):
        kind += f", every {attributes['TimeStepSeconds']:g} s"
    if attributes.get("NumberOfImagesInMosaic"):
        kind += f"{'; ' if kind else ''}from Siemens MOSAIC ({attributes['NumberOfImagesInMosaic']} slices per image)"
    return kind


def study_record(study, ref=None) -> dict:
    """A JSON-friendly view of one study (no patient identifiers)."""
    return {
        "uid": study.uid,
        "kind": getattr(ref, "kind", ""),
        "source": study.source or getattr(ref, "source", ""),
        "description": study.description,
        "date": study.date,
        "modality": study.modality,
        "scans": [_scan_record(i, s) for i, s in enumerate(study.scans)],
        "skipped": [{"item": item, "reason": reason} for item, reason in study.skipped],
    }


def _fmt_date(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else (date or "date ?")


def format_study(rec: dict) -> str:
    """The text block of one study record."""
    lines = [f"Study {rec['uid']}  {_fmt_date(rec['date'])}  {rec['modality'] or '?'}  "
             f"{rec['description']!r}", f"  source: {rec['source']}"]
    if rec.get("error"):
        lines.append(f"  error: {rec['error']}")
        return "\n".join(lines)
    lines.append(f"  scans kept ({len(rec['scans'])}):")
    if rec["scans"]:
        header = f"    {'#':>2}  {'series':>6}  {'description':<32} {'mod':<4} {'shape (s x r x c)':<18} " \
                 f"{'spacing mm (s, r, c)':<22} orientation"
        lines.append(header)
    for s in rec["scans"]:
        shape = " x ".join(str(n) for n in s["shape"])
        spacing = ", ".join(f"{x:.3g}" for x in s["spacing_mm"])
        series = "?" if s["series_number"] is None else str(s["series_number"])
        desc = s["description"] if len(s["description"]) <= 32 else s["description"][:31] + "~"
        lines.append(f"    {s['index']:>2}  {series:>6}  {desc:<32} {s['modality']:<4} {shape:<18} "
                     f"{spacing:<22} {s['orientation']}")
        if s.get("kind"):
            lines.append(f"{'':>14}= {s['kind']}")
        for w in s["warnings"]:
            lines.append(f"{'':>14}! {w}")
    lines.append(f"  skipped ({len(rec['skipped'])}):")
    for item in rec["skipped"]:
        lines.append(f"    - {item['item']}: {item['reason']}")
    return "\n".join(lines)


def run(args) -> int:
    from ..io import load_study
    from ..io.dispatch import discover_with_problems
    from ..study import StudyLoadError

    options = {"min_slices": args.min_slices, "keep_secondary_capture": args.keep_secondary_capture,
               "keep_localizers": args.keep_localizers}
    refs, stray = discover_with_problems(args.path)
    if not refs:
        detail = f"; e.g. {stray[0][0]}: {stray[0][1]}" if stray else ""
        raise StudyLoadError(f"{args.path}: no study found (no readable DICOM, NIfTI or HLIP tensor files"
                             f"{detail})")
    records = []
    iterator = refs
    if len(refs) > 1 and not args.json:
        from tqdm import tqdm

        iterator = tqdm(refs, desc="loading studies", unit="study", file=sys.stderr, leave=False)
    for ref in iterator:
        try:
            study = load_study(ref, **(options if ref.kind == "dicom" else {}))
            records.append(study_record(study, ref))
        except StudyLoadError as e:  # one bad study must not hide the others
            records.append({"uid": ref.uid, "kind": ref.kind, "source": ref.source, "description": ref.description,
                            "date": ref.date, "modality": ref.modality, "scans": [], "skipped": [],
                            "error": str(e)})
    not_in_study = [{"item": item, "reason": reason} for item, reason in stray]
    if args.json:
        print(json.dumps({"path": str(args.path), "studies": records, "not_in_any_study": not_in_study},
                         indent=2, default=str))
    else:
        print("\n\n".join(format_study(r) for r in records))
        if not_in_study:
            print(f"\nnot part of any study ({len(not_in_study)}):")
            for item in not_in_study:
                print(f"    - {item['item']}: {item['reason']}")
        if len(records) > 1:
            print(f"\n{len(records)} studies, {sum(len(r['scans']) for r in records)} scans in {args.path}")
    return 0 if any(r["scans"] for r in records) or not any(r.get("error") for r in records) else 2
