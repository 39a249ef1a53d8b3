"""Send a report's objects to a PACS node the client knows (a nodes-file name, or a URL), and check they arrived.

A PACS may accept a store and still drop the objects (a routing rule or filter that discards them with a
success status), so after the store the node is asked (QIDO-RS or C-FIND) for the report's series under the
source study; a series it does not hold is an error, and nothing is recorded as sent.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def _series_of(files) -> tuple[str, Counter]:
    import pydicom

    count: Counter = Counter()
    study = ""
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
        study = str(ds.StudyInstanceUID)
        count[str(ds.SeriesInstanceUID)] += 1
    return study, count


def send_files(files: Sequence[str | Path], node) -> dict:
    """Store ``files`` (objects of one study) on ``node`` over STOW-RS (DICOMweb) or C-STORE (DIMSE).

    Returns ``{"node", "protocol", "stored", "warnings"}``; raises ``PacsError`` (one line: node and status)
    when the node refuses or does not hold the objects afterwards.
    """
    from ..pacs import PacsError, connect
    from ..pacs.store import store_files

    study, expected = _series_of(files)
    with connect(node) as client:
        answer = store_files(client, files)
        held = {s["series_uid"]: s["instances"] for s in client.find_series(study)}
        missing = [uid for uid, n in expected.items() if held.get(uid, 0) < n]
        if missing:
            raise PacsError(f"{client.node}: {answer['protocol']} answered success but the node does not hold "
                            f"{len(missing)} of the {len(expected)} report series afterwards (filtered out?); "
                            "nothing recorded as sent")
    return answer
