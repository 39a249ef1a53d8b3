"""Store DICOM files into a PACS: STOW-RS (DICOMweb) or C-STORE (DIMSE), through the client that retrieves.

``store_files(client, files)`` sends Part 10 files as they are (no re-encoding) and returns
``{"node", "protocol", "stored": [SOP Instance UIDs], "warnings": [...]}``. Anything the server does not
accept raises one :class:`PacsError` naming the node and the status (HTTP status or DIMSE status code),
never the credentials nor the files' patient identifiers.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path

from .errors import PacsError

STOW_TYPE = "application/dicom"
# DICOM JSON tags of a STOW-RS answer
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, WARNING_REASON, SOP_INSTANCE = "00081197", "00081196", "00081155"
DIMSE_WARNINGS = (0xB000, 0xB006, 0xB007, 0x0107, 0x0116)


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise PacsError(f"{path}: not a DICOM file that can be stored ({type(e).__name__})") from None


def store_files(client, files: Sequence[str | Path]) -> dict:
    """Store ``files`` with ``client`` (a :class:`~hlip_engine.pacs.dicomweb.DicomWebClient` or
    :class:`~hlip_engine.pacs.dimse.DimseClient`); see the module docstring."""
    from .dicomweb import DicomWebClient

    files = [Path(f) for f in files]
    if not files:
        return {"node": client.node.display, "protocol": "", "stored": [], "warnings": []}
    if isinstance(client, DicomWebClient):
        return _stow(client, files)
    return _c_store(client, files)


# --- DICOMweb --------------------------------------------------------------------------------------
def _stow(client, files: list[Path]) -> dict:
    req = client._requests
    node = client.node
    study_uids = {str(_header(f).StudyInstanceUID) for f in files}
    path = f"studies/{next(iter(study_uids))}" if len(study_uids) == 1 else "studies"
    where = f"{node.url}/{path}"
    boundary = "hlip-" + secrets.token_hex(12)
    parts = []
    for f in files:
        parts += [f"--{boundary}\r\nContent-Type: {STOW_TYPE}\r\n\r\n".encode(), f.read_bytes(), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="{STOW_TYPE}"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    t = node.timeout
    try:
        r = client.session.post(where, data=b"".join(parts), headers=headers, timeout=(t, max(t, 60.0)))
    except req.exceptions.SSLError:
        raise PacsError(f"{node}: STOW-RS failed: TLS certificate check failed") from None
    except req.exceptions.Timeout:
        raise PacsError(f"{node}: STOW-RS got no answer within {t:g} s; nothing recorded as stored") from None
    except req.exceptions.ConnectionError:
        raise PacsError(f"{node}: STOW-RS failed: cannot connect (is the server up, and the URL right?)") from None
    except req.exceptions.RequestException as e:
        raise PacsError(f"{node}: STOW-RS failed ({type(e).__name__})") from None
    answer = _stow_answer(r)
    failed = [(it.get(SOP_INSTANCE, {}).get("Value", ["?"])[0], it.get(FAILURE_REASON, {}).get("Value", ["?"])[0])
              for it in answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])]
    if r.status_code >= 400 or failed:
        why = f"HTTP {r.status_code} {r.reason}"
        if failed:
            why += f", {len(failed)} of {len(files)} instances refused (failure reason {_reason(failed[0][1])})"
        elif r.status_code in (401, 403):
            why += " (the server refused our credentials)"
        raise PacsError(f"{node}: STOW-RS rejected the store ({why}); nothing recorded as stored")
    stored = [it.get(SOP_INSTANCE, {}).get("Value", [""])[0]
              for it in answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])]
    warnings = [f"warning reason {_reason(it.get(WARNING_REASON, {}).get('Value', ['?'])[0])}"
                for it in answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", []) if WARNING_REASON in it]
    if not stored:
        stored = [str(_header(f).SOPInstanceUID) for f in files]
    return {"node": node.display, "protocol": "STOW-RS", "stored": stored, "warnings": warnings}


def _stow_answer(r) -> dict:
    try:
        data = json.loads(r.content or b"{}")
    except ValueError:
        return {}
    if isinstance(data, list):
        data = data[0] if data else {}
    return data if isinstance(data, dict) else {}


def _reason(code) -> str:
    try:
        return f"0x{int(code):04X}"
    except (TypeError, ValueError):
        return str(code)


# --- DIMSE -----------------------------------------------------------------------------------------
def _c_store(client, files: list[Path]) -> dict:
    from .dimse import _status_text

    headers = [(f, _header(f)) for f in files]
    contexts = list(dict.fromkeys(str(ds.SOPClassUID) for _, ds in headers))
    stored, warnings = [], []
    with client._open(contexts) as assoc:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        for f, ds in headers:
            if str(ds.SOPClassUID) not in accepted:
                raise PacsError(f"{client.node}: C-STORE rejected (the PACS accepts no SOP class "
                                f"{ds.SOPClassUID}); nothing recorded as stored")
            status = assoc.send_c_store(str(f))
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise PacsError(f"{client.node}: C-STORE of an instance got no answer (association broken off); "
                                "nothing recorded as stored")
            if code != 0 and code not in DIMSE_WARNINGS:
                raise PacsError(f"{client.node}: C-STORE rejected ({_status_text(status)}); nothing recorded "
                                "as stored")
            if code != 0:
                warnings.append(_status_text(status))
            stored.append(str(ds.SOPInstanceUID))
    return {"node": client.node.display, "protocol": "C-STORE", "stored": stored, "warnings": warnings}
