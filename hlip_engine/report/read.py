"""Read an HLIP report SR back into findings (pydicom only: the plugin's client install reads it too).

``findings_from_sr(path or dataset)`` gives, for an SR this package wrote (TID 1500, tracking identifiers
``HLIP finding: ...`` / ``HLIP relevance: ...``), a plain dict:

    {"file", "sop_instance_uid", "study_uid", "series_uid", "content_date", "verification": "UNVERIFIED",
     "model", "version", "fingerprint", "prompt_set", "mode", "templates", "statement", "notes": [...],
     "findings": {name: probability}, "relevance": [{"prompt", "peak_lps": [x, y, z] | None,
     "frame_of_reference": uid | "", "scan_importance": [{"value", "series_uid", "sop_instance_uid"}]}]}

and None for anything else (another SR, an image, an unreadable file).
"""
from __future__ import annotations

from pathlib import Path

FINDING_PREFIX = "HLIP finding: "
RELEVANCE_PREFIX = "HLIP relevance: "
TRACKING_ID, MEASUREMENT_GROUP, ALG_NAME, ALG_VERSION, ALG_PARAM = "112039", "125007", "111001", "111003", "111002"
PROBABILITY, SCAN_IMPORTANCE, COMMENT = "122157", "HSCANIMP", "121106"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _name(item) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return "", ""
    return str(seq[0].get("CodeValue", "")), str(seq[0].get("CodeMeaning", ""))


def _items(item):
    return list(item.get("ContentSequence") or [])


def _walk(items):
    for it in items:
        yield it
        yield from _walk(_items(it))


def _num(item) -> float | None:
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return None
    try:
        return float(seq[0].NumericValue)
    except (AttributeError, TypeError, ValueError):
        return None


def _sop_series(ds) -> dict[str, str]:
    out = {}
    for ev in list(ds.get("CurrentRequestedProcedureEvidenceSequence") or []) + \
            list(ds.get("PertinentOtherEvidenceSequence") or []):
        for series in ev.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                out[str(sop.get("ReferencedSOPInstanceUID", ""))] = str(series.get("SeriesInstanceUID", ""))
    return out


def _group(group, sop_series: dict[str, str], out: dict) -> None:
    children = _items(group)
    tracking = next((str(c.get("TextValue", "")) for c in children
                     if str(c.get("ValueType", "")) == "TEXT" and _name(c)[0] == TRACKING_ID), "")
    for c in _walk(children):
        code = _name(c)[0]
        if str(c.get("ValueType", "")) != "TEXT":
            continue
        text = str(c.get("TextValue", ""))
        if code == ALG_NAME and not out["model"]:
            out["model"] = text.removeprefix("HLIP ")
        elif code == ALG_VERSION and not out["version"]:
            out["version"] = text
        elif code == ALG_PARAM:
            for key, prefix in (("fingerprint", "checkpoint sha256 "), ("prompt_set", "prompt set "),
                                ("mode", "mode ")):
                if text.startswith(prefix) and not out[key]:
                    out[key] = text[len(prefix):]
            if text.startswith("template ") and text[len("template "):] not in out["templates"]:
                out["templates"].append(text[len("template "):])
    if tracking.startswith(FINDING_PREFIX):
        value = next((_num(c) for c in children if _name(c)[0] == PROBABILITY), None)
        if value is not None:
            out["findings"][tracking[len(FINDING_PREFIX):]] = value
    elif tracking.startswith(RELEVANCE_PREFIX):
        entry = {"prompt": tracking[len(RELEVANCE_PREFIX):], "peak_lps": None, "frame_of_reference": "",
                 "scan_importance": []}
        for c in children:
            kind = str(c.get("ValueType", ""))
            if kind == "SCOORD3D" and str(c.get("GraphicType", "")) == "POINT":
                entry["peak_lps"] = [float(v) for v in c.GraphicData][:3]
                entry["frame_of_reference"] = str(c.get("ReferencedFrameOfReferenceUID", ""))
            elif kind == "NUM" and _name(c)[0] == SCAN_IMPORTANCE:
                sop = ""
                for ref in _items(c):
                    if str(ref.get("ValueType", "")) == "IMAGE" and ref.get("ReferencedSOPSequence"):
                        sop = str(ref.ReferencedSOPSequence[0].get("ReferencedSOPInstanceUID", ""))
                entry["scan_importance"].append({"value": _num(c), "sop_instance_uid": sop,
                                                 "series_uid": sop_series.get(sop, "")})
        out["relevance"].append(entry)


def findings_from_sr(source) -> dict | None:
    """Findings of an HLIP report SR (a path or a pydicom Dataset); None when it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = ""
    ds = source
    if isinstance(source, (str, Path)):
        path = str(source)
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, AttributeError, TypeError, KeyError):
            return None
    if not str(ds.get("SOPClassUID", "")).startswith(SR_PREFIX):
        return None
    out = {"file": path, "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
           "study_uid": str(ds.get("StudyInstanceUID", "")), "series_uid": str(ds.get("SeriesInstanceUID", "")),
           "content_date": f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}",
           "verification": str(ds.get("VerificationFlag", "")), "model": "", "version": "", "fingerprint": "",
           "prompt_set": "", "mode": "", "templates": [], "statement": "", "notes": [], "findings": {},
           "relevance": []}
    sop_series = _sop_series(ds)
    for item in _walk(_items(ds)):
        if str(item.get("ValueType", "")) == "CONTAINER" and _name(item)[0] == MEASUREMENT_GROUP:
            _group(item, sop_series, out)
        elif str(item.get("ValueType", "")) == "CONTAINER" and _name(item)[1] == "Qualitative Evaluations":
            texts = [str(c.get("TextValue", "")) for c in _items(item)
                     if str(c.get("ValueType", "")) == "TEXT" and _name(c)[0] == COMMENT]
            if texts:
                out["statement"], out["notes"] = texts[0], texts[1:]
    if not out["findings"] and not out["relevance"]:
        return None
    return out


def study_findings(files) -> list[dict]:
    """Every HLIP report among ``files`` (paths, or a folder searched recursively), newest first."""
    paths = []
    for f in [files] if isinstance(files, (str, Path)) else files:
        p = Path(f)
        paths += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    found = [r for r in (findings_from_sr(p) for p in paths) if r is not None]
    return sorted(found, key=lambda r: r["content_date"], reverse=True)
