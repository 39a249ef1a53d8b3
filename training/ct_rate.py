"""CT-RATE as the official HLIP training reads it: the manifest, the report string, the invalid volumes.

``python -m training.ct_rate --reports train_reports.csv --out raw_annotation.json`` writes the official
manifest (``data/ct_rate/annotation.ipynb``, ``raw_annotate``): one entry per study (``train_1_a``), its
recons (``train_1_a_1.nii.gz``, ...) and one report, the string
``"The volume shows: {impression} The volume looks like: {findings}"`` (each part ending in a full stop;
double quotes, single quotes and parentheses removed), held as a one-element list.

Scan tensors are the official cache (``data/ct_rate/process.py``): raw Hounsfield float tensors
[D, H, W] = (z, y, x) resampled to 3 x 1 x 1 mm, at ``ROOT/train_1/train_1_a/train_1_a_1.pt``.
``training.data.StudyDataset`` reads that layout: window -1150..350 HU to [0, 1] (clipped), zero-pad
to at least 112 x 336 x 336 (half before, the odd voxel after), centre-crop, normalise; one recon
drawn per study in training; the invalid volumes below left out (``--exclude-volumes``; the ct-rate recipe
sets them).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

# src/hlip_train/data_chest_ct.py: CT_RATE_INVALID_DATA
INVALID_VOLUMES = ("train_1267_a_4", "train_11755_a_3", "train_11755_a_4")
HU_WINDOW = (-1150.0, 350.0)
GRID = (112, 336, 336)


def _sentence(text) -> str:
    text = "nan" if text is None or text == "" else str(text)  # pandas reads an empty cell as NaN: str() -> 'nan'
    return text if text.endswith(".") else text + "."


def official_report(impression, findings) -> str:
    """The official CT-RATE report text for one study."""
    report = f"The volume shows: {_sentence(impression)} The volume looks like: {_sentence(findings)}"
    for ch in ('"', "'", "(", ")"):
        report = report.replace(ch, "")
    return report


def manifest_from_reports(path: str | Path) -> dict[str, dict]:
    """CT-RATE's ``*_reports.csv`` (VolumeName, Findings_EN, Impressions_EN) -> the official manifest.

    The first recon of a study gives its report (as the official), later ones only add their name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CT-RATE reports CSV not found")
    studies: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"VolumeName", "Findings_EN", "Impressions_EN"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: expected the CT-RATE columns {sorted(need)}, got {reader.fieldnames}")
        for row in reader:
            name = row["VolumeName"].strip()
            study = name.rsplit("_", 1)[0]
            if study in studies:
                studies[study]["recons"].append(name)
            else:
                studies[study] = {"recons": [name],
                                  "report": [official_report(row["Impressions_EN"], row["Findings_EN"])]}
    if not studies:
        raise ValueError(f"{path}: no rows")
    return studies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ct_rate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", required=True, help="CT-RATE train_reports.csv (or valid_reports.csv)")
    p.add_argument("--out", required=True, help="manifest JSON to write (the official raw_annotation.json)")
    args = p.parse_args(argv)
    try:
        manifest = manifest_from_reports(args.reports)
    except (ValueError, FileNotFoundError) as e:
        print(f"training.ct_rate: error: {e}", file=sys.stderr)
        return 2
    from hlip_engine.atomic import atomic_write_json

    atomic_write_json(args.out, manifest, indent=1)
    print(f"{len(manifest)} studies ({sum(len(v['recons']) for v in manifest.values())} recons) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
