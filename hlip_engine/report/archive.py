"""A report as one zip (the DICOM objects + report.json): what an HTTP answer (``hlip serve``) sends back."""
from __future__ import annotations

import io
import tempfile
import zipfile


def report_archive(analysis, send=None, tmp_dir: str | None = None) -> bytes:
    """Write the report of ``analysis`` in a temporary folder (stored on node ``send`` when given, raising
    ``PacsError`` when refused) and return the folder's files zipped (stored, not compressed)."""
    from .api import send_report, write_report

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="hlip-report-", dir=tmp_dir) as tmp:
        result = write_report(analysis, tmp)
        if send is not None:
            send_report(result, send)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
            for path in [*result.files, result.out_dir / "report.json"]:
                out.write(path, path.name)
    return buf.getvalue()
