"""STOW-RS on ``hlip serve``: instances POSTed over DICOMweb go into the listener's spool, behind the server's token.

``POST /dicom-web/studies`` (or ``/dicom-web/studies/{StudyInstanceUID}``) with ``multipart/related;
type="application/dicom"``: each part a DICOM file. Each instance is checked as the C-STORE SCP checks it
(receive.py) and written into the spool of the index folder (spool.py), where a running ``hlip listen`` adopts
the study, waits for its quiet period, and indexes, scores and ranks it as any other. The answer is the
STOW-RS response (DICOM JSON): ReferencedSOPSequence for the stored instances, FailedSOPSequence with a
FailureReason (0xA900 invalid, 0xC000 unreadable, 0xA700 out of resources) for the others; HTTP 200 when all
were stored, 202 when some were, 409 when none. The body is limited by ``--max-upload-mb``.
"""
from __future__ import annotations

import io
import mmap
import re
import shutil
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the route's annotations here

from .instance_check import CANNOT_UNDERSTAND, MISMATCH, OUT_OF_RESOURCES, check_instance
from .spool import Spool, SpoolFull, check_uid

BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)


def parse_multipart(data, boundary: bytes):
    """(headers bytes, body memoryview) of each part of a multipart body (``data``: bytes or mmap)."""
    delim = b"--" + boundary
    start = data.find(delim)
    while start >= 0:
        head = start + len(delim)
        if data[head:head + 2] == b"--":
            return
        nxt = data.find(b"\r\n" + delim, head)
        if nxt < 0:
            raise ValueError("multipart body without its closing boundary")
        sep = data.find(b"\r\n\r\n", head, nxt)
        if sep < 0:
            raise ValueError("a multipart part without headers")
        yield bytes(data[head:sep]), memoryview(data)[sep + 4:nxt]
        start = nxt + 2


def store_part(spool: Spool, part, study: str | None) -> tuple[str, str, int]:
    """(SOP class, SOP instance, status) of one part stored into the spool."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(part), force=False)
        sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        attrs = {k: ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows",
                                        "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames")}
        if "PixelData" in ds:
            attrs["PixelDataLength"] = len(ds.PixelData)
    except Exception:  # noqa: BLE001 - whatever a broken file makes the parser raise
        return "", "", CANNOT_UNDERSTAND
    try:
        study_uid, _ = check_instance(attrs, check_uid(sop_uid, "SOPInstanceUID"), ts)
        if study and study_uid != study:
            raise ValueError("instance of another study")
    except ValueError:
        return sop_class, sop_uid, MISMATCH
    try:
        spool.store(study_uid, sop_uid, lambda f: f.write(part), len(part))
    except (SpoolFull, OSError):
        return sop_class, sop_uid, OUT_OF_RESOURCES
    return sop_class, sop_uid, 0


def response(results: list[tuple[str, str, int]]) -> tuple[int, dict]:
    def ref(cls, inst, reason=None):
        item = {"00081150": {"vr": "UI", "Value": [cls]} if cls else {"vr": "UI"},
                "00081155": {"vr": "UI", "Value": [inst]} if inst else {"vr": "UI"}}
        if reason is not None:
            item["00081197"] = {"vr": "US", "Value": [reason]}
        return item

    ok = [ref(c, i) for c, i, s in results if s == 0]
    failed = [ref(c, i, s) for c, i, s in results if s != 0]
    body = {}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": ok}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    return (200 if not failed else 202 if ok else 409), body


def add_stow_routes(app, auth, config) -> None:
    """Add the STOW-RS routes to the server's FastAPI ``app`` (``auth``: its token dependency)."""
    from fastapi.responses import JSONResponse

    from ..serve.errors import ClientError
    from ..serve.uploads import UploadFolder, receive_body

    async def stow(request: Request, study: str | None = None):
        kind = request.headers.get("content-type", "")
        m = BOUNDARY.search(kind)
        if not kind.lower().startswith("multipart/related") or not m:
            raise ClientError(415, 'send instances as multipart/related; type="application/dicom" with a boundary')
        if study:
            try:
                check_uid(study, "StudyInstanceUID")
            except ValueError as e:
                raise ClientError(400, str(e)) from None
        folder = UploadFolder(config.tmp_dir)
        try:
            await receive_body(request.stream(), folder.zip_path, config.max_upload_bytes,
                               request.headers.get("content-length"))
            spool = Spool(Path(config.index), owner=False)
            try:
                results = _store_all(spool, folder.zip_path, m.group(1).encode(), study)
            finally:
                shutil.rmtree(spool.partial, ignore_errors=True)
        finally:
            folder.cleanup()
        status, body = response(results)
        return JSONResponse(body, status_code=status, media_type="application/dicom+json")

    app.add_api_route("/dicom-web/studies", stow, methods=["POST"], dependencies=auth, tags=["dicomweb"],
                      summary="STOW-RS: store instances for the listener to index, score and rank")
    app.add_api_route("/dicom-web/studies/{study}", stow, methods=["POST"], dependencies=auth, tags=["dicomweb"],
                      summary="STOW-RS into one study")


def _store_all(spool: Spool, path: Path, boundary: bytes, study: str | None) -> list[tuple[str, str, int]]:
    from ..serve.errors import ClientError

    with open(path, "rb") as f:
        if not path.stat().st_size:
            raise ClientError(400, "empty body")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                results = []
                for headers, part in parse_multipart(data, boundary):
                    if b"application/dicom" not in headers.lower():
                        results.append(("", "", CANNOT_UNDERSTAND))
                        continue
                    try:
                        results.append(store_part(spool, part, study))
                    finally:
                        part.release()
            except ValueError as e:
                raise ClientError(400, f"not a multipart body: {e}") from None
    if not results:
        raise ClientError(400, "no instance in the body")
    return results
