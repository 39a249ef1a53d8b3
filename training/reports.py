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

from hlip_engine.index.reports import ID_COLUMNS, read_reports  # noqa: F401  (one reader, in the engine)


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
