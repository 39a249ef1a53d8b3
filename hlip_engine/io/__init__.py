"""Study I/O: any path (DICOM folder, NIfTI, HLIP tensors) -> one :class:`~hlip_engine.study.Study`.

``load_study`` and ``discover`` pick the reader from what the path holds; nothing downstream reads
files its own way. Only numpy is imported here: pydicom, nibabel and torch load when a reader needs them.

- ``load_study(path_or_ref, **options) -> Study``  (options: see :class:`LoadOptions`)
- ``discover(path) -> list[StudyRef]``  (headers only)
- ``write_dicom_series(scan, out_dir, ...)`` / ``write_enhanced_series(scan, path, ...)``: real DICOM out
- ``load_volumes(scan)``: the 4-D data behind a scan averaged from a 4-D series (DWI trace, time-series mean)
"""
from __future__ import annotations

from .dicom import load_volumes
from .dicom_series import LoadOptions
from .dicom_write import write_dicom_series, write_enhanced_series
from .dispatch import discover, discover_with_problems, load_study

__all__ = ["LoadOptions", "discover", "discover_with_problems", "load_study", "load_volumes",
           "write_dicom_series", "write_enhanced_series"]
