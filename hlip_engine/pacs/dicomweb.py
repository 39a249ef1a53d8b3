"""DICOMweb: QIDO-RS to search, WADO-RS (multipart/related, as stored) to retrieve; basic or bearer auth.

``requests`` directly rather than ``dicomweb-client``: retrieval streams the multipart body straight into
files (each part written as it arrives, no whole-series buffer, no decoding), which keeps it close to what
``curl`` takes for the same bytes. Error messages name the node and the path, never the query (a patient
ID may be in it) and never the credentials.
"""
from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

from .client import PacsClient
from .errors import PacsError
from .nodes import Node, credentials
from .query import (
    PATIENT_FIELDS,
    SERIES_FIELDS,
    STUDY_FIELDS,
    check_uid,
    from_dicom_json,
    qido_params,
    series_record,
    sort_series,
    study_record,
)

CHUNK = 1 << 20
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DicomWebClient(PacsClient):
    def __init__(self, node: Node):
        super().__init__(node)
        import requests

        self._requests = requests
        self.session = requests.Session()
        auth, user, secret = credentials(node)
        if auth == "bearer":
            self.session.headers["Authorization"] = f"Bearer {secret}"
        elif auth == "basic":
            self.session.auth = (user, secret)
        self.session.verify = node.verify
        self.session.headers["User-Agent"] = "hlip-explorer"

    def close(self) -> None:
        self.session.close()

    # --- HTTP ------------------------------------------------------------------------------------
    def _get(self, path: str, *, params=None, accept: str = "application/dicom+json", stream: bool = False):
        req = self._requests
        where = f"{self.node.url}/{path.lstrip('/')}"
        url = where
        if params:
            url += "?" + qido_query(params)
        t = self.node.timeout
        try:
            prep = self.session.prepare_request(req.Request(
                "GET", where, headers={"Accept": accept, "Accept-Encoding": "identity"}))
            prep.url = url  # as built: requests would percent-encode the "^" of a person name again
            r = self.session.send(prep, stream=stream, timeout=(t, t), verify=self.session.verify,
                                  allow_redirects=True)
        except req.exceptions.SSLError:
            raise PacsError(f"{self.node}: TLS certificate check failed (set \"verify\" for the node)") from None
        except req.exceptions.ConnectTimeout:
            raise PacsError(f"{self.node}: no answer within {t:g} s (is the server up and reachable?)") from None
        except req.exceptions.ReadTimeout:
            raise PacsError(f"{self.node}: the server did not answer {where} within {t:g} s") from None
        except req.exceptions.ConnectionError as e:
            why = "connection refused" if "refused" in str(e).lower() else "cannot connect"
            raise PacsError(f"{self.node}: {why} (is the server up, and the URL right?)") from None
        except req.exceptions.RequestException as e:
            raise PacsError(f"{self.node}: request failed ({type(e).__name__})") from None
        if r.status_code in (401, 403):
            r.close()
            raise PacsError(f"{self.node}: HTTP {r.status_code} {r.reason}: the server refused our credentials "
                            "(set HLIP_PACS_USERNAME and HLIP_PACS_PASSWORD, or HLIP_PACS_TOKEN, or the keyring)")
        if r.status_code >= 400:
            r.close()
            raise PacsError(f"{self.node}: HTTP {r.status_code} {r.reason} for {where}")
        return r

    def _json(self, path: str, params=None) -> list[dict]:
        r = self._get(path, params=params)
        if r.status_code == 204 or not r.content.strip():
            return []
        try:
            out = r.json()
        except ValueError:
            raise PacsError(f"{self.node}: the answer to {path} is not DICOM JSON") from None
        if not isinstance(out, list):
            raise PacsError(f"{self.node}: the answer to {path} is not a list of DICOM JSON objects")
        return out

    # --- the interface ---------------------------------------------------------------------------
    def echo(self) -> float:
        t0 = time.perf_counter()
        self._json("studies", params=[("limit", "1"), ("includefield", "StudyInstanceUID")])
        return time.perf_counter() - t0

    def _find_studies(self, filters: dict, include_patient: bool, limit: int | None) -> list[dict]:
        fields = STUDY_FIELDS + (PATIENT_FIELDS if include_patient else ())
        items = self._json("studies", params=qido_params(filters, include_patient=include_patient, limit=limit))
        return [study_record(from_dicom_json(it, fields), include_patient) for it in items]

    def find_series(self, study_uid: str) -> list[dict]:
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        items = self._json(f"studies/{study_uid}/series", params=[("includefield", f) for f in SERIES_FIELDS])
        return sort_series([series_record(from_dicom_json(it, SERIES_FIELDS)) for it in items])

    def thumbnail(self, study_uid: str, size: int = 64) -> bytes | None:
        """A PNG of the middle image of the study's largest series, rendered by the server (WADO-RS
        ``/rendered``), at most ``size`` pixels a side; None when the server cannot render it."""
        try:
            series = [s for s in self.find_series(study_uid) if s["instances"] > 0]
            if not series:
                return None
            pick = max(series, key=lambda s: s["instances"])
            base = f"studies/{check_uid(study_uid)}/series/{check_uid(pick['series_uid'])}"
            items = self._json(f"{base}/instances", params=[("includefield", "00200013")])
            uids = sorted((_instance_number(it), (it.get("00080018") or {}).get("Value", [""])[0]) for it in items)
            if not uids:
                return None
            sop = check_uid(uids[len(uids) // 2][1], "SOPInstanceUID")
            r = self._get(f"{base}/instances/{sop}/rendered", params=[("viewport", f"{size},{size}")],
                          accept="image/png")
            data = r.content
            return data if data[:8] == b"\x89PNG\r\n\x1a\n" else None
        except PacsError:
            return None

    @contextlib.contextmanager
    def _session(self):
        yield self.session

    def _fetch_series(self, session, study_uid: str, series: dict, folder: Path) -> Iterator[int]:
        uid = series["series_uid"]
        r = self._get(f"studies/{study_uid}/series/{uid}", accept=ACCEPT_DICOM, stream=True)
        try:
            boundary = _boundary(r.headers.get("Content-Type", ""))
            if boundary is None:
                raise PacsError(f"{self.node}: WADO-RS answered {r.headers.get('Content-Type', '?')!r}, "
                                "not multipart/related")
            yield from _write_parts(_reader(r, self.node), boundary, folder)
        finally:
            r.close()


_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~*?,:/")


def _instance_number(item: dict) -> int:
    try:
        return int((item.get("00200013") or {}).get("Value", [0])[0])
    except (TypeError, ValueError):
        return 0


def qido_query(params) -> str:
    """The query string of a QIDO-RS request, every value made of characters no layer re-encodes.

    Some servers (Orthanc 1.10 with DICOMweb 1.7) do not percent-decode query values, and urllib3
    percent-encodes characters such as ``^`` or a space whatever we send. So a character outside the
    plain set (letters, digits, ``-._~*?,:/``) is sent as the DICOM one-character wildcard ``?``: a person
    name ``DOE^JANE`` goes as ``DOE?JANE``, a description ``HEAD WO`` as ``HEAD?WO``, which every server
    matches as meant (at worst it widens the match by that one character).
    """
    return "&".join(f"{k}=" + "".join(c if c in _PLAIN else "?" for c in str(v)) for k, v in params)


def _boundary(content_type: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/related"):
        return None
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.I)
    return m.group(1).encode() if m else None


def _reader(response, node):
    """``read(n)`` over the raw body, turning a broken-off connection into one PacsError."""
    import urllib3

    raw = response.raw

    def read(n: int) -> bytes:
        try:
            return raw.read(n, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if "timed out" in str(e).lower():
                raise PacsError(f"{node}: the transfer stalled for {node.timeout:g} s; nothing of the "
                                "series was kept") from None
            raise PacsError(f"{node}: the server broke off the transfer; nothing of the series was kept") from None
    return read


def _write_parts(read, boundary: bytes, folder: Path) -> Iterator[int]:
    """Parse a multipart/related stream, writing each part's body to ``folder/NNNNNN.dcm``.

    Parts with a Content-Length are copied straight to the file; others are scanned for the boundary.
    Raises PacsError when the stream ends before the closing boundary.
    """
    delim = b"--" + boundary
    buf = bytearray()

    def fill() -> None:
        data = read(CHUNK)
        if not data:
            raise PacsError("the server closed the connection in the middle of the transfer; nothing of the "
                            "series was kept")
        buf.extend(data)

    while (i := buf.find(delim)) < 0:
        fill()
    del buf[:i + len(delim)]
    n = 0
    while True:
        while len(buf) < 2:
            fill()
        if buf[:2] == b"--":
            return  # the closing boundary: the whole series arrived
        while (h := buf.find(b"\r\n\r\n")) < 0:
            fill()
        headers = bytes(buf[:h]).decode("latin-1")
        del buf[:h + 4]
        m = re.search(r"^content-length:\s*(\d+)\s*$", headers, re.I | re.M)
        n += 1
        with open(folder / f"{n:06d}.dcm", "wb") as f:
            if m:
                left = int(m.group(1))
                while left:
                    if not buf:
                        fill()
                    take = min(left, len(buf))
                    f.write(buf[:take])
                    del buf[:take]
                    left -= take
                while len(buf) < len(delim) + 2:
                    fill()
                if not buf.startswith(b"\r\n" + delim):
                    raise PacsError("malformed multipart answer (a part is longer than its Content-Length)")
                del buf[:len(delim) + 2]
            else:
                end = b"\r\n" + delim
                while (j := buf.find(end)) < 0:
                    keep = len(end) - 1
                    if len(buf) > keep:
                        f.write(buf[:len(buf) - keep])
                        del buf[:len(buf) - keep]
                    fill()
                f.write(buf[:j])
                del buf[:j + len(end)]
        yield n
