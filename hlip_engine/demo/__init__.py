"""Demo data: phantom brain MRI and head CT studies with reports, built on real MNI152 anatomy.

No patient data or HLIP weights can ship with the project, so the demo model is trained and evaluated on
these phantoms. ``make_studies(out_dir, n, seed)`` writes real DICOM studies (several series, a localizer,
reformats) with one finding or none each, a report per study, ``reports.json`` and ``labels.csv``.
"""
from __future__ import annotations

from .findings import FINDINGS, LOBES
from .studies import make_studies, plan_library, report_for

__all__ = ["FINDINGS", "LOBES", "make_studies", "plan_library", "report_for"]
