"""Reports beside an index: ``hlip index build --reports FILE`` records each study's impression, so a search
hit can be judged before it is opened (the GUI's table, ``hlip search --json``'s ``impression`` field).

The file is what ``training.prepare --reports`` takes: JSON ``{study: text}`` or a CSV with an id column
(study_uid / uid / folder / accession ..., else the first) and a text column (report / impression /
findings / text, else the last). A study is matched by its StudyInstanceUID, then its folder's name.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

ID_COLUMNS = ("study_uid", "study_id", "studyinstanceuid", "uid", "folder", "accession", "accessionnumber", "id")
TEXT_COLUMNS = ("impression", "report", "findings", "text", "report_text")
MAX_CHARS = 400  # what a table row and a JSON hit carry; the full report stays in the reports file
_SECTION = re.compile(r"\b(impression|conclusion|opinion|summary)\s*:\s*", re.IGNORECASE)
_NEXT = re.compile(r"\b(recommendation|recommendations|findings|technique|comparison|history)\s*:", re.IGNORECASE)


def reports_json(path: Path) -> dict | None:
    """A reports file -> its JSON object ``{study: report}``, or None when it is a CSV; FileNotFoundError /
    ValueError naming the file otherwise (also what ``training.prepare --reports`` reads)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: reports file not found")
    if Path(path).suffix.lower() != ".json":
        return None
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{study: report}}")
    return data


def reports_csv(f, path) -> tuple[csv.DictReader, list[str]]:
    """An open reports CSV (any of , ; tab) -> (its rows as dicts, its header); it needs two columns or more."""
    sample = f.read(4096)
    f.seek(0)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(f, dialect=dialect)
    header = reader.fieldnames or []
    if len(header) < 2:
        raise ValueError(f"{path}: a reports CSV needs an id column and a text column, got {header}")
    return reader, header


def impression_of(report: str) -> str:
    """The report's IMPRESSION (or CONCLUSION) section, else the whole text; one line, at most MAX_CHARS."""
    text = " ".join(str(report).split())
    found = _SECTION.search(text)
    if found:
        text = text[found.end():]
        stop = _NEXT.search(text)
        text = text[:stop.start()] if stop else text
    text = text.strip()
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 1].rstrip() + "…"


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


REPORT_COLUMNS = ("report", "findings", "impression", "text", "report_text")  # training: the whole report first


def read_reports(path: str | Path, *, id_column: str = "", text_column: str = "",
                 text_columns: tuple[str, ...] = REPORT_COLUMNS, json_keys: tuple[str, ...] = ("report",),
                 ) -> dict[str, list[str] | str]:
    """{key: report text or sentences} from a JSON ``{study: text | [sentences] | {key: ...}}`` or a CSV (an id
    column and a text column, by name or by ``id_column`` / ``text_column``; rows of one key are joined).
    Raises FileNotFoundError / ValueError naming the file when it cannot be used."""
    path = Path(path)
    data = reports_json(path)  # None for a CSV
    if data is not None:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                value = next((value[k] for k in json_keys if value.get(k)), "")
            if not isinstance(value, (str, list)):
                raise ValueError(f"{path}: report of {key!r} is neither text nor a list of sentences")
            out[str(key)] = value
        return out
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader, header = reports_csv(f, path)
        id_col = _pick(header, ID_COLUMNS, id_column, 0, "id", path)
        text_col = _pick(header, text_columns, text_column, -1, "text", path)
        out: dict[str, str] = {}
        for row in reader:
            key, text = (row.get(id_col) or "").strip(), (row.get(text_col) or "").strip()
            if key and text:
                out[key] = f"{out[key]} {text}" if key in out else text
    return out


def read_impressions(path: str | Path) -> dict[str, str]:
    """{study key: impression}; raises ValueError naming the file when it cannot be used."""
    reports = read_reports(path, text_columns=TEXT_COLUMNS, json_keys=("impression", "report"))
    out = {}
    for key, value in reports.items():
        text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        if text.strip():
            out[key] = impression_of(text)
    return out


def match_impression(impressions: dict[str, str], meta: dict) -> str:
    """The impression of the study ``meta`` describes (by StudyInstanceUID, then folder name); "" if none."""
    folder = Path(str(meta.get("path", "")))
    for key in (meta.get("study_uid"), folder.name, folder.stem):
        if key and key in impressions:
            return impressions[key]
    return ""


SEXES = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


def demographics(patient, study_date: str) -> dict:
    """Age at the study in whole years (90 and over as 90, as HIPAA's Safe Harbor asks) and sex (M / F / O):
    what a hit shows. These are the patient characteristics that DICOM's de-identification keeps with its
    "Retain Patient Characteristics" option (PS3.15 E.3.6) and that Safe Harbor does not count as identifiers;
    name, ID and birth date never reach the index unless the build keeps identifiers."""
    out = {}
    sex = SEXES.get(str(getattr(patient, "sex", "") or "").strip().upper())
    if sex:
        out["sex"] = sex
    born = getattr(patient, "birth_date", "") or ""
    study_date = str(study_date or "")
    if not (len(born) == 8 and born.isdigit() and len(study_date) == 8 and study_date.isdigit()):
        return out
    years = int(study_date[:4]) - int(born[:4]) - (1 if study_date[4:] < born[4:] else 0)
    if years >= 0:
        out["age"] = min(years, 90)
    return out
