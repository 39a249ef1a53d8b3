"""Study filters and result records, the same for DICOMweb (QIDO-RS) and DIMSE (C-FIND).

Filters (all optional): ``patient_id``, ``patient_name``, ``accession``, ``date_from``, ``date_to``
(YYYYMMDD or YYYY-MM-DD, inclusive), ``modality`` (in the study) and ``description`` (a part of the study
description, case as the PACS matches it; ``*`` and ``?`` are DICOM wildcards).

A study record is ``{study_uid, date, modality, description, series, instances}``; with
``include_patient=True`` it also has ``patient_id``, ``patient_name`` and ``accession``.
"""
from __future__ import annotations

import re

from .errors import PacsError

FILTERS = ("patient_id", "patient_name", "accession", "date_from", "date_to", "modality", "description")
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# DICOM keyword -> tag (the QIDO-RS JSON keys)
TAGS = {
    "StudyInstanceUID": "0020000D", "StudyDate": "00080020", "StudyDescription": "00081030",
    "ModalitiesInStudy": "00080061", "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208", "PatientID": "00100020", "PatientName": "00100010",
    "AccessionNumber": "00080050", "SeriesInstanceUID": "0020000E", "SeriesNumber": "00200011",
    "SeriesDescription": "0008103E", "Modality": "00080060", "NumberOfSeriesRelatedInstances": "00201209",
    "SOPClassesInStudy": "00080062",
}
STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
PATIENT_FIELDS = ("PatientID", "PatientName", "AccessionNumber")
SERIES_FIELDS = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality",
                 "NumberOfSeriesRelatedInstances")


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a folder name and in a query."""
    uid = str(uid or "").strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not UID.match(uid):
        raise PacsError(f"{what} {uid[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def _date(text, what: str) -> str:
    if text in (None, ""):
        return ""
    digits = str(text).strip().replace("-", "").replace("/", "").replace(".", "")
    if not re.fullmatch(r"\d{8}", digits):
        raise PacsError(f"{what} {text!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
    import datetime as _dt

    try:
        _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise PacsError(f"{what} {text!r} is not a calendar date") from None
    return digits


def _text(value, what: str) -> str:
    value = "" if value is None else str(value).strip()
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise PacsError(f"{what} {value!r} holds a backslash or a control character")
    if len(value) > 64:
        raise PacsError(f"{what} is longer than 64 characters")
    return value


def normalize_filters(**filters) -> dict[str, str]:
    """Check and normalise the filters; unknown names are an error (a typo must not match everything)."""
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise PacsError(f"unknown filter(s) {', '.join(sorted(unknown))}; known: {', '.join(FILTERS)}")
    out = {k: _text(filters.get(k), k.replace("_", " ")) for k in FILTERS if k not in ("date_from", "date_to")}
    out["date_from"] = _date(filters.get("date_from"), "date from")
    out["date_to"] = _date(filters.get("date_to"), "date to")
    if out["date_from"] and out["date_to"] and out["date_from"] > out["date_to"]:
        raise PacsError(f"date from {out['date_from']} is after date to {out['date_to']}")
    out["modality"] = out["modality"].upper()
    return {k: v for k, v in out.items() if v}


def date_range(f: dict) -> str:
    a, b = f.get("date_from", ""), f.get("date_to", "")
    if a and b and a == b:
        return a
    return f"{a}-{b}" if (a or b) else ""


def _contains(text: str) -> str:
    """A part of a description as a DICOM wildcard match (``*`` around it unless the user wrote wildcards)."""
    return text if ("*" in text or "?" in text) else f"*{text}*"


def matching_keys(f: dict) -> dict[str, str]:
    """Normalised filters as DICOM matching keys (the same for QIDO-RS and C-FIND)."""
    keys = {}
    if f.get("patient_id"):
        keys["PatientID"] = f["patient_id"]
    if f.get("patient_name"):
        keys["PatientName"] = f["patient_name"]
    if f.get("accession"):
        keys["AccessionNumber"] = f["accession"]
    if date_range(f):
        keys["StudyDate"] = date_range(f)
    if f.get("modality"):
        keys["ModalitiesInStudy"] = f["modality"]
    if f.get("description"):
        keys["StudyDescription"] = _contains(f["description"])
    return keys


def qido_params(f: dict, *, include_patient: bool = False, limit: int | None = None) -> list[tuple[str, str]]:
    """QIDO-RS query parameters for a study search."""
    params = list(matching_keys(f).items())
    fields = STUDY_FIELDS + (PATIENT_FIELDS if include_patient else ())
    params += [("includefield", name) for name in fields]
    if limit:
        params.append(("limit", str(int(limit))))
    return params


# --- records ---------------------------------------------------------------------------------------
def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def study_record(values: dict, include_patient: bool = False) -> dict:
    """A study record from ``{keyword: value}`` (values already plain Python: str, int, list of str)."""
    modality = values.get("ModalitiesInStudy") or ""
    if isinstance(modality, (list, tuple)):
        modality = "\\".join(str(m) for m in modality if m)
    rec = {"study_uid": str(values.get("StudyInstanceUID") or ""), "date": str(values.get("StudyDate") or ""),
           "modality": str(modality), "description": str(values.get("StudyDescription") or ""),
           "series": _int(values.get("NumberOfStudyRelatedSeries")),
           "instances": _int(values.get("NumberOfStudyRelatedInstances"))}
    if include_patient:
        rec["patient_id"] = str(values.get("PatientID") or "")
        rec["patient_name"] = str(values.get("PatientName") or "")
        rec["accession"] = str(values.get("AccessionNumber") or "")
    return rec


def series_record(values: dict) -> dict:
    number = values.get("SeriesNumber")
    return {"series_uid": str(values.get("SeriesInstanceUID") or ""),
            "number": _int(number) if number not in (None, "") else None,
            "modality": str(values.get("Modality") or ""),
            "description": str(values.get("SeriesDescription") or ""),
            "instances": _int(values.get("NumberOfSeriesRelatedInstances"))}


def from_dicom_json(item: dict, keywords) -> dict:
    """``{keyword: value}`` from one DICOM JSON object (QIDO-RS), person names as their alphabetic form."""
    out = {}
    for kw in keywords:
        el = item.get(TAGS[kw]) or {}
        value = el.get("Value")
        if not value:
            continue
        if el.get("vr") == "PN":
            value = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v) for v in value]
        out[kw] = value[0] if len(value) == 1 and kw not in ("ModalitiesInStudy", "SOPClassesInStudy") else value
    return out


def from_dataset(ds, keywords) -> dict:
    """``{keyword: value}`` from a pydicom dataset (C-FIND response identifier)."""
    out = {}
    for kw in keywords:
        value = ds.get(kw)
        if value is None or value == "":
            continue
        if kw in ("ModalitiesInStudy", "SOPClassesInStudy"):
            value = [str(v) for v in value] if not isinstance(value, str) else [value]
        elif kw == "PatientName":
            value = str(value)
        out[kw] = value
    return out


def sort_studies(records: list[dict]) -> list[dict]:
    """Newest first, then by UID (servers answer in any order)."""
    return sorted(records, key=lambda r: (r["date"], r["study_uid"]), reverse=True)


def sort_series(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["number"] is None, r["number"] or 0, r["series_uid"]))
