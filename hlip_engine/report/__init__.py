"""Results back into the PACS: zero-shot findings and relevance maps as DICOM objects of the source study.

- ``make_report(study, model, out_dir, ...)`` (api.py): computes (compute.py), writes a Comprehensive 3D SR
  following TID 1500 (sr.py) and one Parametric Map per relevance prompt and source series (parametric_map.py)
  with deterministic UIDs (uids.py), and stores them on a PACS node when asked (send.py);
  ``report_archive(analysis)`` (archive.py) gives the same files as one zip, for an HTTP answer.
- ``findings_from_sr(path or dataset)`` (read.py, pydicom only): such an SR read back into findings.

Every object is a research result, not for clinical use, and says so.
"""
from __future__ import annotations

from .read import findings_from_sr, study_findings


def __getattr__(name):  # writing needs highdicom and torch; reading does not
    if name in ("make_report", "write_report", "send_report", "ReportResult"):
        from . import api

        return getattr(api, name)
    if name == "report_archive":
        from .archive import report_archive

        return report_archive
    if name in ("analyse", "Analysis"):
        from . import compute

        return getattr(compute, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Analysis", "ReportResult", "analyse", "findings_from_sr", "make_report", "report_archive",
           "send_report", "study_findings", "write_report"]
