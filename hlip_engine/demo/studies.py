"""A library of phantom studies on disk: DICOM folders, a report per study, labels for evaluation.

``make_studies(out_dir, n, seed)`` is what the demo, the tests and the demo model's training call. The findings
are balanced over the library (normal, tumour, infarct, haemorrhage, atrophy in turn, shuffled); haemorrhage is
a head-CT finding, the others appear on MRI two times in three and on CT otherwise. Study ``i`` of a seed is
drawn from its own generator, so the same (seed, i) always gives the same pixels, headers, UIDs and report,
whatever ``n`` is (SOPInstanceUIDs of the slices are the one exception while ``write_dicom_series`` draws them
at random). The report has a generator of its own, so ``report_for(record)`` rewrites it from the record alone
(after a change of report templates, without rendering the images again).

Out_dir layout::

    phantom_0001/            one study: flat, or one sub-folder per series (both occur in real exports)
    ...
    reports.json             {study_uid: report}
    labels.csv               study_uid, modality, one 0/1 column per finding
    studies.json             every record make_studies returns (details, series, paths), to reload without regenerating
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..study import PatientInfo, Scan
from .acquisition import CONTRASTS, Pose, intensity_volume, render
from .anatomy import load_anatomy
from .findings import FINDINGS, apply_finding, lesion_centre, mirror, normal_tissues, sample_finding
from .protocols import BRAIN_CENTRE_RAS, ct_protocol, mr_protocol
from .reports import write_report

_DESCRIPTIONS = {"MR": ("MRI BRAIN WITHOUT CONTRAST", "MR HEAD WO CONTRAST", "MRI BRAIN"),
                 "CT": ("CT HEAD WITHOUT CONTRAST", "CT BRAIN NON-CONTRAST", "CT HEAD WO CONTRAST")}


def plan_library(n: int, seed: int) -> list[tuple[str, str]]:
    """(finding, modality) of each study: findings in shuffled rounds of five, so any n stays balanced."""
    rng = np.random.default_rng([seed, 7919])
    kinds: list[str] = []
    while len(kinds) < n:
        kinds += [FINDINGS[j] for j in rng.permutation(len(FINDINGS))]
    seen = dict.fromkeys(FINDINGS, 0)
    plan = []
    for kind in kinds[:n]:
        k = seen[kind]
        seen[kind] += 1
        modality = "CT" if kind == "haemorrhage" or (k + seed) % 3 == 2 else "MR"
        plan.append((kind, modality))
    return plan


def study_uid(seed: int, index: int) -> str:
    from pydicom.uid import generate_uid

    # named parts: pydicom joins the sources, and "1" + "13" must not equal "11" + "3"
    return generate_uid(entropy_srcs=["hlip-explorer-phantom", f"seed={seed}", f"study={index}"])


def _series_uid(study_uid: str, number: int) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[study_uid, "series", str(number)])


def make_studies(out_dir: str | Path, n: int, seed: int = 0, *, progress: bool = False,
                 mosaic_dwi: bool = False) -> list[dict]:
    """Write ``n`` phantom studies into ``out_dir``; returns one record per study.

    ``mosaic_dwi``: write each MR study's DWI as a Siemens MOSAIC (b=0 + three b=1000 directions, as raw
    Siemens DWI comes off the scanner); off by default, and it draws nothing from the study's random stream,
    so a seed gives the same studies either way (the DWI then loads as two scans, b=0 and the b=1000 trace).

    Record keys: ``uid``, ``path`` (the study folder), ``modality`` ("MR"/"CT"), ``findings`` ([] or [name]),
    ``details`` (side, lobe, size, territory... and ``centre_lps``/``mirror_lps`` in patient mm),
    ``labels`` ({finding: 0/1} over ``FINDINGS``, "normal" included), ``report``, ``impression``,
    ``description``, ``date``, ``series`` (number, description, plane, slices, localizer flag per series).
    """
    if int(n) < 1:
        raise ValueError(f"make_studies: n must be at least 1, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_library(int(n), int(seed))
    steps = range(len(plan))
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="phantom studies", unit="study")
    # one process on purpose: about 0.6 s of CPU per study, and no worker pool to hang or to guard against
    records = [_make_study(out, i, int(seed), *plan[i], mosaic_dwi=mosaic_dwi) for i in steps]
    _write_text(out / "reports.json", json.dumps({r["uid"]: r["report"] for r in records}, indent=1))
    _write_text(out / "labels.csv", _labels_csv(records))
    _write_text(out / "studies.json", json.dumps(records, indent=1))
    return records


def _make_study(out: Path, i: int, seed: int, kind: str, modality: str, mosaic_dwi: bool = False) -> dict:
    anat = load_anatomy()
    rng = np.random.default_rng([seed, i + 1])
    uid = study_uid(seed, i)
    details = sample_finding(kind, rng)
    ageing_mm = 0.0 if kind == "atrophy" else float(rng.uniform(0.0, 1.0))
    tissues = apply_finding(normal_tissues(anat, sulcal_mm=ageing_mm), details, anat)
    pose = Pose.draw(rng)
    plans, protocol = (mr_protocol if modality == "MR" else ct_protocol)(rng)
    centre = pose.to_lps(BRAIN_CENTRE_RAS)
    if (where := lesion_centre(details)) is not None:
        details["centre_lps"] = [round(v, 2) for v in pose.to_lps(where)]
        details["mirror_lps"] = [round(v, 2) for v in pose.to_lps(mirror(where))]

    # scanner-to-scanner differences in tissue signal, a few per cent
    overrides = {name: value * float(rng.uniform(0.96, 1.04)) for name, value in CONTRASTS["CT"].items()}
    overrides = {k: round(v) for k, v in overrides.items()} | {"blood": details.get("density_hu", 70.0)}
    volumes: dict[str, np.ndarray] = {}

    def volume(contrast: str) -> np.ndarray:
        if contrast not in volumes:
            volumes[contrast] = intensity_volume(tissues, contrast, overrides if contrast == "CT" else None)
        return volumes[contrast]

    age = int(rng.integers(70, 91)) if kind == "atrophy" else int(rng.integers(25, 86))
    date = _dt.date(2024, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 700)))
    sex = str(rng.choice(["F", "M"]))
    patient = PatientInfo(name=f"PHANTOM^{i + 1:04d}", id=f"PH{seed:03d}{i + 1:05d}",
                          birth_date=f"{date.year - age}{date.month:02d}01", sex=sex)
    description = str(rng.choice(_DESCRIPTIONS[modality]))
    nested = bool(rng.random() < 0.5)
    folder = out / f"phantom_{i + 1:04d}"
    if folder.exists():
        shutil.rmtree(folder)  # a stale study of an earlier run must not mix into this one
    common = dict(study_uid=uid, study_description=description, study_date=date.strftime("%Y%m%d"),
                  patient=patient)
    study_extra = {"StudyTime": f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}00",
                   "AccessionNumber": f"A{seed:03d}{i + 1:06d}", "PatientAge": f"{age:03d}Y",
                   "InstitutionName": "HLIP Explorer phantom library", "StudyID": f"{i + 1}"}
    series = []
    for plan in plans:
        scans = render(plan, volume(plan.contrast), anat, pose, centre, rng)
        target = folder / f"SE{plan.number:04d}" if nested else folder
        extra = {**study_extra, **plan.extra}
        for scan in scans:  # UIDs from the study and series number: the same seed writes the same files
            scan.series_uid = _series_uid(uid, plan.number)
        if len(scans) == 1 and mosaic_dwi and plan.contrast == "DWI":
            from ..io.dicom_write_mosaic import write_mosaic_dwi

            write_mosaic_dwi(scans[0], target, series_number=plan.number, extra=extra, **common)
        elif len(scans) == 1:
            from ..io import write_dicom_series

            write_dicom_series(scans[0], target, series_number=plan.number, image_type=plan.image_type,
                               extra=extra, **common)
        else:
            _write_multiplane(scans, target, plan.number, plan.image_type, extra, common)
        series.append({"number": plan.number, "description": plan.description, "contrast": plan.contrast,
                       "plane": "3-plane" if len(scans) > 1 else plan.plane, "slices": plan.slices,
                       "localizer": "LOCALIZER" in plan.image_type, "image_type": list(plan.image_type)})
    record = {"uid": uid, "path": str(folder), "modality": modality,
              "findings": [] if kind == "normal" else [kind], "details": details,
              "labels": {f: int(f == kind) for f in FINDINGS}, "report": "", "impression": "",
              "description": description, "date": date.strftime("%Y%m%d"), "patient_name": patient.name,
              "age": age, "sex": sex, "series": series, "protocol": protocol, "seed": int(seed), "index": i}
    record["report"], record["impression"] = report_for(record)
    return record


def report_for(record: dict) -> tuple[str, str]:
    """(report, impression) of a study record (``make_studies``' dict: details, modality, series, seed, index)."""
    described = [s["description"] for s in record["series"] if not s["localizer"]]
    rng = np.random.default_rng([record["seed"], record["index"] + 1, 7])  # the report's own stream
    return write_report(record["details"], record["modality"], described, rng)


def _write_multiplane(scans: list[Scan], folder: Path, number: int, image_type, extra: dict, common: dict) -> None:
    """A 3-plane localizer: one series whose images lie in three orientations (as GE and Siemens store it).

    The writer makes one orientation per call, so each plane is written to a scratch folder and its files are
    renumbered into one series (shared SeriesInstanceUID, InstanceNumber 1..N, fresh SOPInstanceUIDs).
    """
    import pydicom
    from pydicom.uid import generate_uid

    from ..io import write_dicom_series

    series_uid = scans[0].series_uid
    instance = 0
    for p, scan in enumerate(scans):
        scratch = folder / f".plane{number}_{p}"
        for path in write_dicom_series(scan, scratch, series_number=number, image_type=image_type,
                                       extra=extra, **common):
            instance += 1
            ds = pydicom.dcmread(path)
            sop = generate_uid(entropy_srcs=[series_uid, "instance", str(instance)])
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.InstanceNumber = instance
            ds.save_as(folder / f"IM{number:04d}_{instance:05d}.dcm", enforce_file_format=True)
            path.unlink()
        scratch.rmdir()


def _labels_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["study_uid", "modality", *FINDINGS])
    for r in records:
        writer.writerow([r["uid"], r["modality"], *(r["labels"][f] for f in FINDINGS)])
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    """Atomic write: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
