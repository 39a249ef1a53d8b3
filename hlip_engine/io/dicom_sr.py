"""The radiology report inside a study: a DICOM Structured Report (Basic Text, Enhanced or Comprehensive SR).

A report SR is a content tree: CONTAINER items (the document, its sections) hold TEXT items, each named by a
coded concept ("Findings", "Impression", ...). ``read_sr_report`` walks the tree and gives

    {"impression": "...", "findings": "...", "text": "<every text item, in order>", "file": path, "title": ...}

The impression is the text under a section (or item) named Impression / Conclusion / Summary (DCM 121073,
LOINC 19005-8 "Radiology Imaging study [Impression]"); findings likewise (DCM 121070/121071). When a report
names no sections, its whole text is the impression: search hits show the report rather than nothing.
Only TEXT values are read: codes, numbers and image references are not report prose.
"""
from __future__ import annotations

from pathlib import Path

IMPRESSION_NAMES = ("impression", "impressions", "conclusion", "conclusions", "summary",
                    "radiology imaging study [impression]", "overall impression")
FINDINGS_NAMES = ("finding", "findings", "radiology imaging study [findings]")
SR_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _concept(item) -> str:
    seq = item.get("ConceptNameCodeSequence")
    if seq:
        return str(seq[0].get("CodeMeaning", "")).strip()
    return ""


def _walk(items, heading: str, out: list[tuple[str, str]]) -> None:
    for item in items or ():
        kind = str(item.get("ValueType", "")).upper()
        name = _concept(item)
        if kind == "TEXT":
            text = str(item.get("TextValue", "")).strip()
            if text:
                out.append((name or heading, text))
        if "ContentSequence" in item:
            _walk(item.ContentSequence, name or heading if kind == "CONTAINER" else heading, out)


def report_sections(ds) -> list[tuple[str, str]]:
    """(section or concept name, text) of every TEXT item of an SR dataset, in document order."""
    out: list[tuple[str, str]] = []
    _walk(ds.get("ContentSequence"), _concept(ds), out)
    return out


ALGORITHM_MANUFACTURER = "HLIP Explorer"  # what `hlip report` writes as Manufacturer of its SR and maps


def read_sr_report(path: str | Path) -> dict | None:
    """The report in the SR file ``path``; None when it is not an SR or holds no text."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), force=False)
    except (InvalidDicomError, OSError, ValueError, AttributeError, TypeError):
        return None
    if not str(ds.get("SOPClassUID", "")).startswith(SR_SOP_PREFIX) and ds.get("Modality") != "SR":
        return None
    if str(ds.get("Manufacturer", "")) == ALGORITHM_MANUFACTURER:  # HLIP Explorer's own result, not a report
        return None
    sections = report_sections(ds)
    if not sections:
        return None

    def under(names) -> str:
        return "\n".join(t for n, t in sections if n.lower() in names)

    impression, findings = under(IMPRESSION_NAMES), under(FINDINGS_NAMES)
    text = "\n".join(t for _, t in sections)
    return {"impression": impression or (text if not findings else ""), "findings": findings, "text": text,
            "title": _concept(ds), "file": str(path)}


def study_report(files) -> dict:
    """The report of a study from its SR files (the latest by content date/time when there are several),
    ``{}`` when none holds text."""
    best: tuple[str, dict] | None = None
    for f in files:
        rep = read_sr_report(f)
        if rep is None:
            continue
        key = _when(f)
        if best is None or key > best[0]:
            best = (key, rep)
    return best[1] if best else {}


def _when(path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                             specific_tags=["ContentDate", "ContentTime", "InstanceNumber"])
    except Exception:  # noqa: BLE001 - ordering only
        return ""
    return f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}{int(ds.get('InstanceNumber', 0) or 0):08d}"
