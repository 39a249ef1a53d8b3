"""Report files for ``training.prepare``: a JSON or CSV mapping a study (uid or folder) to its report text.

Accepted shapes:
- JSON ``{key: "report text"}`` or ``{key: ["sentence", ...]}`` or ``{key: {"report": ...}}``;
- CSV with a header: an id column (study_uid / study_id / StudyInstanceUID / uid / folder / accession, or
  the first column) and a text column (report / findings / impression / text, or the last column); several
  rows for one study are joined in order.
Keys are matched against the study uid, then the study's folder name, then its path under the archive.
"""
from __future__ import annotations

import re
from pathlib import Path

from hlip_engine.index.reports import reports_csv, reports_json

ID_COLUMNS = ("study_uid", "study_id", "studyinstanceuid", "uid", "folder", "accession", "accessionnumber", "id")
TEXT_COLUMNS = ("report", "findings", "impression", "text", "report_text")


def _pick(header: list[str], wanted: tuple[str, ...], given: str, fallback: int, what: str, path: Path) -> str:
    if given:
        if given not in header:
            raise ValueError(f"{path}: no {what} column {given!r} (columns: {header})")
        return given
    lower = {h.lower().strip(): h for h in header}
    for w in wanted:
        if w in lower:
            return lower[w]
    return header[fallback]


def read_reports(path: str | Path, *, id_column: str = "", text_column: str = "") -> dict[str, list[str] | str]:
    """{key: report text or sentences}; raises ValueError naming the file when it cannot be used."""
    path = Path(path)
    data = reports_json(path)  # None for a CSV
    if data is not None:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                value = value.get("report", "")
            if not isinstance(value, (str, list)):
                raise ValueError(f"{path}: report of {key!r} is neither text nor a list of sentences")
            out[str(key)] = value
        return out
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader, header = reports_csv(f, path)
        id_col = _pick(header, ID_COLUMNS, id_column, 0, "id", path)
        text_col = _pick(header, TEXT_COLUMNS, text_column, -1, "text", path)
        out: dict[str, str] = {}
        for row in reader:
            key, text = (row.get(id_col) or "").strip(), (row.get(text_col) or "").strip()
            if key and text:
                out[key] = f"{out[key]} {text}" if key in out else text
    return out


def match_report(reports: dict, candidates: list[str]):
    """The first candidate key (uid, folder name, relative path) that the reports file knows."""
    for key in candidates:
        if key and key in reports:
            return key, reports[key]
    return None, None


_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&-]*[A-Z]):[ \t]*", re.MULTILINE)


def keep_sections(report: str | list[str], sections: list[str]) -> str | list[str]:
    """Only the named sections of a report written with upper-case headers ("FINDINGS: ...", "IMPRESSION: ...").

    CT-RATE trains on findings + impression; clinical history, technique and comparison describe the request
    and the protocol, not the images. A header starts a line (or a sentence of a sentence list) and runs to
    the next header. A report without headers is kept whole; one with headers but none of ``sections``
    comes back empty (the study then has no usable report). Header names compare case-insensitively.
    """
    as_list = not isinstance(report, str)
    text = "\n".join(str(s) for s in report) if as_list else report
    heads = list(_HEADER.finditer(text))
    if not heads:
        return report
    wanted = {s.strip().upper() for s in sections}
    kept = []
    for h, nxt in zip(heads, heads[1:] + [None]):
        if h.group(1) in wanted:  # the pattern matches upper-case names without edge spaces
            kept.append(text[h.start():nxt.start() if nxt else len(text)].strip())
    if as_list:
        return [line for part in kept for line in part.split("\n") if line.strip()]
    return "\n".join(kept)
