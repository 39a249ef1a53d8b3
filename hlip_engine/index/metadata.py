"""Study metadata in SQLite, keyed by the FAISS row id, and the modality/date filters over it.

Why SQLite: one file, no server, indexed filters over millions of rows, readable by any tool. Patient
names and IDs are dropped before anything is written unless the caller explicitly keeps identifiers.
"""
from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np

# what a radiologist filters and reads a hit by; everything else goes to the JSON column ``extra``
COLUMNS = ("key", "path", "study_uid", "date", "modality", "description", "n_scans", "recipe")
# dropped unless keep_identifiers (PatientInfo fields, with or without the "patient_" prefix); the age and
# sex a build records (reports.demographics) are patient characteristics, not identifiers, and stay
IDENTIFIER_KEYS = frozenset({"patient", "patient_name", "patient_id", "patient_birth_date", "patient_sex",
                             "name", "id", "birth_date", "PatientName", "PatientID", "PatientBirthDate"})

STUDIES_SQL = """CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,     -- FAISS row id
    key TEXT UNIQUE NOT NULL,   -- what a resumed build recognises a finished study by
    path TEXT, study_uid TEXT,
    date TEXT,                  -- YYYYMMDD, '' when unknown
    modality TEXT, description TEXT, n_scans INTEGER, recipe TEXT,
    extra TEXT                  -- JSON of further fields
)"""
SKIPPED_SQL = "CREATE TABLE IF NOT EXISTS skipped (key TEXT PRIMARY KEY, path TEXT, reason TEXT)"
FILTER_INDEXES_SQL = ("CREATE INDEX IF NOT EXISTS studies_modality ON studies(modality)",
                      "CREATE INDEX IF NOT EXISTS studies_date ON studies(date)")


def normalise_date(value: Any, what: str = "date") -> str:
    """'2024-03-01', '20240301' or a datetime.date -> '20240301'; '' stays ''."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and len(value) == 8 and value.isdigit():  # DICOM DA, the usual case
        return value
    if hasattr(value, "strftime"):
        return value.strftime("%Y%m%d")
    s = str(value).strip()
    digits = re.sub(r"[-/.]", "", s)
    if not re.fullmatch(r"\d{8}", digits):
        raise ValueError(f"{what} {s!r} is not a date like 2024-03-01 or 20240301")
    return digits


def study_row(meta: dict[str, Any], keep_identifiers: bool) -> tuple:
    """One metadata dict -> the values of COLUMNS + extra, identifiers removed unless kept."""
    meta = dict(meta)
    if "key" not in meta or not meta["key"]:
        if not (meta.get("path") or meta.get("study_uid")):
            raise ValueError("study metadata needs a 'key', or a 'path' / 'study_uid' to make one from")
        meta["key"] = f"{meta.get('path', '')}#{meta.get('study_uid', '')}"
    extra = {k: v for k, v in meta.items() if k not in COLUMNS}
    if keep_identifiers:
        patient = extra.pop("patient", None)
        if patient is not None:
            fields = asdict(patient) if is_dataclass(patient) else dict(patient)
            extra.update({f"patient_{k}": v for k, v in fields.items() if v})
    else:
        extra = {k: v for k, v in extra.items() if k not in IDENTIFIER_KEYS}
    n_scans = meta.get("n_scans")
    return (str(meta["key"]), str(meta.get("path", "")), str(meta.get("study_uid", "")),
            normalise_date(meta.get("date"), f"date of study {meta['key']}"),
            str(meta.get("modality", "")).upper(), str(meta.get("description", "")),
            None if n_scans is None else int(n_scans), str(meta.get("recipe", "")),
            json.dumps(extra, default=str) if extra else "")


def rows_to_dicts(rows: Iterable[sqlite3.Row]) -> dict[int, dict[str, Any]]:
    out = {}
    for r in rows:
        d = {c: r[c] for c in ("id", *COLUMNS)}
        if r["extra"]:
            d.update(json.loads(r["extra"]))
        out[int(r["id"])] = d
    return out


def fetch(con: sqlite3.Connection, ids: Sequence[int]) -> list[dict[str, Any] | None]:
    """Metadata for row ids in the order given; None for -1 (FAISS's 'no result')."""
    ids = [int(i) for i in np.asarray(ids).ravel()]
    wanted = sorted({i for i in ids if i >= 0})
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), 900):  # SQLite's limit on bound parameters
        part = wanted[start:start + 900]
        q = f"SELECT * FROM studies WHERE id IN ({','.join('?' * len(part))})"
        found.update(rows_to_dicts(con.execute(q, part)))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"no study with row id {missing[0]} in this index ({len(missing)} unknown ids)")
    return [found[i] if i >= 0 else None for i in ids]


class FilterColumns:
    """Modality and date of every study as numpy columns, for filters in ~1 ms over a million studies.

    Why not a SQL WHERE per query: fetching half a million ids from SQLite costs ~0.5 s, while the
    columns cost 5 bytes a study and are read once (lazily, at the first filtered search).
    """

    def __init__(self, con: sqlite3.Connection):
        n = con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        code: dict[str, int] = {}  # modality -> small integer, in order of first appearance
        # streamed from the cursor: a million row tuples held at once would cost ~200 MB
        self.modality = np.fromiter((code.setdefault(r[0] or "", len(code)) for r in
                                     con.execute("SELECT modality FROM studies ORDER BY id")), dtype=np.int16, count=n)
        self.modalities = list(code)
        self.date = np.fromiter((int(r[0]) if r[0] else 0 for r in
                                 con.execute("SELECT date FROM studies ORDER BY id")), dtype=np.int32, count=n)

    def select(self, modality: str | Sequence[str] | None = None, date_from: Any = None,
               date_to: Any = None) -> np.ndarray | None:
        """Boolean mask [n] of the studies matching the filters, or None when no filter is set.

        A study with an unknown date never matches a date filter: the user asked for a period.
        """
        keep = None
        if modality:
            mods = [modality] if isinstance(modality, str) else list(modality)
            codes = [self.modalities.index(m.strip().upper()) for m in mods
                     if m and m.strip().upper() in self.modalities]
            keep = np.isin(self.modality, codes)
        if date_from:
            lo = int(normalise_date(date_from, "--date-from"))
            keep = (self.date >= lo) if keep is None else keep & (self.date >= lo)
        if date_to:
            hi = int(normalise_date(date_to, "--date-to"))
            in_range = (self.date > 0) & (self.date <= hi)
            keep = in_range if keep is None else keep & in_range
        return keep
