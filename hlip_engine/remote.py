"""A client of ``hlip serve``: the engine's questions as methods, answered by a server (no torch needed).

    from hlip_engine.remote import RemoteEngine, EngineError
    engine = RemoteEngine("https://gpu-box:8400", token)
    engine.info()                                         # model, index, limits, prompt sets, methods
    engine.search("ring-enhancing lesion", k=20)          # the `hlip search --json` document
    engine.search(study_uid="1.2.3")                      # more like a study of the index
    engine.search(study="/data/study_0001")               # more like a local study (uploaded)
    engine.zeroshot("/data/study_0001", prompt_set="pub-brain-5")["probabilities"]
    rel = engine.relevance(study, "glioma")               # maps on each scan's own voxel grid
    rel.volumes, rel.volume_scans, rel.scan_importance, rel.peak(), rel.peak_slices()
    engine.embed(study)                                    # float32 [E]
    engine.download_study("1.2.3", "/cache/1.2.3")        # a hit of the server's index, as local files

A study is a path (DICOM folder, NIfTI file or folder), a loaded :class:`~hlip_engine.study.Study` (its
``source`` is sent), or ``study_uid=`` for a study the server holds. Local files are zipped and uploaded;
the server decodes them with the same loader. Every failure -- a wrong token (401), a study over the
server's limit (413), a busy server (429, with ``retry_after``), a server that is down -- is one
:class:`EngineError` with ``status``, ``kind`` and a one-line ``reason``.

Only the standard library, numpy and (for relevance maps) nibabel are imported: this is the light
client's whole engine.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import ssl
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np

from .relevance.maps import Relevance  # torch-free: the result type the engine returns

__all__ = ["EngineError", "RemoteEngine", "RemoteRelevance", "unpack_study_zip", "zip_study"]

KINDS = {401: "auth", 403: "auth", 404: "not_found", 413: "too_large", 415: "bad_request", 422: "bad_request",
         400: "bad_request", 409: "bad_request", 429: "busy"}
DOWNLOAD_CHUNK = 1 << 20


class EngineError(Exception):
    """Why the server did not answer: ``status`` (None when it could not be reached), ``kind`` ("auth",
    "too_large", "busy", "down", "not_found", "bad_request", "server"), ``reason`` (one line), and
    ``retry_after`` seconds for a 429."""

    def __init__(self, reason: str, status: int | None = None, kind: str = "server",
                 retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.status, self.kind, self.retry_after = reason, status, kind, retry_after

    @property
    def advice(self) -> str:
        """What the user can do about it, in one sentence (for a notification)."""
        return {"auth": "Check the server token in the Model box (ask whoever runs `hlip serve`).",
                "too_large": "Send a smaller study, or ask for a larger --max-upload-mb on the server.",
                "busy": "The server is busy; try again in a moment.",
                "down": "Check the server address and that `hlip serve` is running and reachable.",
                "not_found": "The server does not hold that study; open it from a local folder instead.",
                "bad_request": "Check the inputs named in the message."}.get(
                    self.kind, "See the server's log for the traceback.")


def _describe(status: int, detail: str, url: str, retry_after: float | None) -> str:
    if status in (401, 403):
        return f"the server at {url} refused the token ({status}): {detail}"
    if status == 413:
        return f"the study is too large for the server ({status}): {detail}"
    if status == 429:
        wait = f"; retry in {retry_after:g} s" if retry_after is not None else ""
        return f"the server is busy ({status}){wait}: {detail}"
    if status >= 500:
        return f"the server failed ({status}): {detail}"
    return f"{detail} ({status})"


# --- uploads ----------------------------------------------------------------------------------------
def _study_path(study) -> Path:
    source = getattr(study, "source", study)
    if not source:
        raise EngineError("this study has no files on disk to send to the server", kind="bad_request")
    path = Path(str(source))
    if not path.exists():
        raise EngineError(f"{path}: no such file or folder", kind="bad_request")
    return path


def _files(path: Path) -> Iterable[tuple[Path, str]]:
    if path.is_file():
        yield path, path.name
        return
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield p, rel.as_posix()


def zip_study(study, out=None):
    """A study's files (a folder's, recursively; or one NIfTI file) as a zip; ``out`` a file object or None
    for a spooled temporary file. Returns the file object, rewound."""
    path = _study_path(study)
    out = out if out is not None else tempfile.SpooledTemporaryFile(max_size=64 << 20)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for src, name in _files(path):
            archive.write(src, name)
    out.seek(0)
    return out


# --- the relevance result -----------------------------------------------------------------------------
@dataclass
class RemoteRelevance(Relevance):
    """The server's relevance: an engine :class:`~hlip_engine.relevance.Relevance` (the same numbers and
    methods: ``volumes`` on each scan's own voxel grid, ``scan_importance``, ``peak()`` ...) read from the
    server's answer, without torch; ``document`` is relevance.json as the server wrote it."""

    document: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return dict(self.document)

    @classmethod
    def from_zip(cls, data: bytes) -> RemoteRelevance:
        """Read the server's answer: relevance.json, tokens.npy and one NIfTI per scan."""
        import nibabel as nib

        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            doc = json.loads(archive.read("relevance.json"))
            tokens = np.load(io.BytesIO(archive.read("tokens.npy")), allow_pickle=False)
            volumes = []
            for entry in doc.get("scans", []):
                img = nib.Nifti1Image.from_bytes(_gunzip(archive.read(entry["file"])))
                # written (column, row, slice): back to the scan's (slice, row, column)
                volumes.append(np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)))
        except (KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
            raise EngineError(f"the server's relevance answer cannot be read ({e})") from None
        meta = {"labels": doc["labels"]} if "labels" in doc else {}
        return cls(tokens=tokens.astype(np.float32), prompt=doc.get("prompt", ""), logit=float(doc.get("logit", 0.0)),
                   method=doc.get("method", ""), patch_size=tuple(doc.get("patch_size", ())),
                   model_grid=tuple(doc.get("model_grid", ())), last_level=doc.get("last_block_level", "study"),
                   scan_indices=doc.get("scan_indices"), volumes=volumes,
                   volume_scans=[int(s["scan"]) for s in doc.get("scans", [])], meta=meta, document=doc)


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


# --- the client --------------------------------------------------------------------------------------
class RemoteEngine:
    """One ``hlip serve``; thread-safe (one kept-alive connection per thread)."""

    def __init__(self, url: str, token: str, *, timeout: float = 600.0, cafile: str | None = None,
                 verify: bool = True):
        parts = urlsplit(url.strip().rstrip("/") if "://" in url else f"http://{url.strip().rstrip('/')}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"not a server address: {url!r} (e.g. https://gpu-box:8400)", kind="bad_request")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.token = str(token or "").strip()
        self.timeout = float(timeout)
        self._context = None
        if self._scheme == "https":
            self._context = ssl.create_default_context(cafile=cafile)
            if not verify:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RemoteEngine({self.url!r})"  # never the token

    # --- transport -------------------------------------------------------------------------------
    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                   context=self._context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, route: str, *, query: Sequence[tuple[str, Any]] = (), json_body=None,
                body=None, content_type: str | None = None, auth: bool = True) -> tuple[int, dict, bytes]:
        """One HTTP exchange -> (status, headers, body); raises EngineError for anything but 2xx."""
        path = self._prefix + route + (("?" + urlencode([(k, v) for k, v in query if v is not None]))
                                       if query else "")
        headers = {"Accept": "application/json, application/zip"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        if body is not None and hasattr(body, "seek"):
            body.seek(0, os.SEEK_END)
            headers["Content-Length"] = str(body.tell())
            body.seek(0)
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # a kept-alive connection the server closed: retry once on a new one
                if attempt or (body is not None and hasattr(body, "seek") and not _rewind(body)):
                    raise EngineError(f"the server at {self.url} closed the connection ({e})", kind="down") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise EngineError(f"the server at {self.url} is not reachable ({type(e).__name__}: {e})",
                                  kind="down") from None
        status, resp_headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        if status >= 400:
            self._raise_for(status, resp_headers, data)
        return status, resp_headers, data

    def _raise_for(self, status: int, resp_headers: dict, data: bytes):
        try:
            detail = str(json.loads(data).get("detail") or "")
        except (ValueError, AttributeError):
            detail = data[:200].decode("utf-8", "replace")
        detail = " ".join(detail.split()) or http.client.responses.get(status, "error")
        retry = resp_headers.get("retry-after")
        retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
        raise EngineError(_describe(status, detail, self.url, retry_after), status,
                          KINDS.get(status, "server" if status >= 500 else "bad_request"), retry_after)

    def _download(self, route: str, out) -> int:
        """GET ``route`` and stream its body into the file object ``out`` (never all in memory)."""
        headers = {"Accept": "application/zip, application/json", "Authorization": f"Bearer {self.token}"}
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request("GET", self._prefix + route, headers=headers)
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                if attempt:
                    raise EngineError(f"the server at {self.url} closed the connection ({e})", kind="down") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise EngineError(f"the server at {self.url} is not reachable ({type(e).__name__}: {e})",
                                  kind="down") from None
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            if resp.status >= 400:
                self._raise_for(resp.status, resp_headers, resp.read(1 << 16))
            size = 0
            while chunk := resp.read(DOWNLOAD_CHUNK):
                out.write(chunk)
                size += len(chunk)
            if resp.length:  # a Content-Length answer that stopped short (a chunked one raises IncompleteRead)
                raise EngineError(f"the server at {self.url} ended the download early", kind="down")
            return size
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise EngineError(f"the download from {self.url} broke off ({type(e).__name__}: {e})",
                              kind="down") from None
        except BaseException:
            self.close()  # a half-read answer must not be left on a kept-alive connection
            raise

    def _json(self, *args, **kwargs) -> dict:
        _status, _headers, data = self.request(*args, **kwargs)
        try:
            return json.loads(data)
        except ValueError:
            raise EngineError(f"the server at {self.url} answered something that is not JSON") from None

    def _study_request(self, method: str, route: str, study, study_uid: str | None, query, parse):
        if (study is None) == (study_uid is None):
            raise EngineError("give a study (path or Study) or a study_uid, not both", kind="bad_request")
        if study_uid is not None:
            return parse(self.request(method, route, query=query, json_body={"study_uid": str(study_uid)}))
        with zip_study(study) as upload:
            return parse(self.request(method, route, query=query, body=upload, content_type="application/zip"))

    # --- the questions -----------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/v1/health", auth=False)

    def info(self) -> dict:
        return self._json("GET", "/v1/info")

    def search(self, text: str | None = None, *, study_uid: str | None = None, study=None, k: int = 10,
               modality: str | list[str] | None = None, date_from: str | None = None, date_to: str | None = None,
               plain: bool = False) -> dict:
        """The ``hlip search --json`` document: free text, a study of the index (study_uid), or a local study."""
        if sum(x is not None for x in (text, study_uid, study)) != 1:
            raise EngineError("search needs exactly one of: text, study_uid, study", kind="bad_request")
        if study is not None:
            mods = [modality] if isinstance(modality, str) else list(modality or [])
            query = [("k", int(k)), *[("modality", m) for m in mods], ("date_from", date_from),
                     ("date_to", date_to)]
            return self._study_request("POST", "/v1/search", study, None, query, lambda r: json.loads(r[2]))
        body: dict[str, Any] = {"k": int(k), "plain": bool(plain)}
        body.update({"text": text} if text is not None else {"study_uid": study_uid})
        for key, value in (("modality", modality), ("date_from", date_from), ("date_to", date_to)):
            if value:
                body[key] = value
        return self._json("POST", "/v1/search", json_body=body)

    def zeroshot(self, study=None, *, study_uid: str | None = None, prompts=None, prompt_set: str | None = None,
                 templates: Sequence[str] | None = None, mode: str | None = None,
                 template_set: str | None = None) -> dict:
        """The ``hlip zeroshot --json`` document. prompts: a list (one class each) or {class: phrasing(s)}
        ({class: (negative, positive)} with mode="binary"), or a named prompt_set."""
        query: list[tuple[str, Any]] = []
        if isinstance(prompts, dict):
            query.append(("classes", json.dumps({str(c): list(v) if isinstance(v, (list, tuple)) else v
                                                 for c, v in prompts.items()})))
        elif prompts is not None:
            query += [("prompt", p) for p in prompts]
        query += [("prompt_set", prompt_set), *[("template", t) for t in templates or []], ("mode", mode),
                  ("template_set", template_set)]
        return self._study_request("POST", "/v1/zeroshot", study, study_uid, query, lambda r: json.loads(r[2]))

    def relevance(self, study=None, prompt: str | Sequence[str] = "", *, study_uid: str | None = None,
                  templates: Sequence[str] | None = None, method: str | None = None,
                  output: int = 0) -> RemoteRelevance:
        """Relevance maps of ``prompt``: a :class:`RemoteRelevance` with ``volumes`` on each scan's grid."""
        phrases = [prompt] if isinstance(prompt, str) else list(prompt)
        query = [*[("prompt", p) for p in phrases], *[("template", t) for t in templates or []],
                 ("method", method), ("output", int(output))]
        return self._study_request("POST", "/v1/relevance", study, study_uid, query,
                                   lambda r: RemoteRelevance.from_zip(r[2]))

    def embed(self, study=None, *, study_uid: str | None = None) -> np.ndarray:
        """The study's L2-normalised embedding, float32 [E] (as ``hlip embed``)."""
        doc = self._study_request("POST", "/v1/embed", study, study_uid, [], lambda r: json.loads(r[2]))
        return np.asarray(doc["embedding"], dtype=np.float32)

    def download_study(self, study_uid: str, dest_dir) -> Path:
        """A study of the server's index, as its files: downloaded (streamed to disk) and unpacked into the
        fresh folder ``dest_dir`` (it must not exist yet), which is returned.

        Atomic: the files are unpacked into a hidden sibling folder that is renamed to ``dest_dir`` only when
        the whole study is there, so an interrupted download never leaves a ``dest_dir``. Zip-slip safe: an
        entry that is absolute, climbs with ``..``, or is a link refuses the whole download. Raises
        EngineError (``not_found`` for a UID the server does not hold) and FileExistsError."""
        from .atomic import atomic_dir

        uid = str(study_uid or "").strip()
        if not uid or len(uid) > 128 or not all(c.isalnum() or c in ".-_" for c in uid) or set(uid) == {"."}:
            raise EngineError(f"not a StudyInstanceUID: {study_uid!r}", kind="bad_request")
        dest = Path(dest_dir)
        if dest.exists():
            raise FileExistsError(f"{dest} already exists: download into a fresh folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest.parent, prefix=".download-") as archive:
            self._download(f"/v1/studies/{uid}", archive)
            archive.seek(0)
            with atomic_dir(dest) as tmp:
                n = unpack_study_zip(archive, tmp)
                if n == 0:
                    raise EngineError(f"the server sent no files for study {uid}", kind="server")
        return dest


def _zip_target(root: Path, name: str) -> Path | None:
    """Where zip entry ``name`` goes under ``root``; None for folders; EngineError for one that leaves it."""
    from pathlib import PurePosixPath

    clean = name.replace("\\", "/")
    pure = PurePosixPath(clean)
    if "\x00" in name or clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in pure.parts:
        raise EngineError(f"the server's zip has an entry outside the study ({name!r}): refused", kind="server")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or clean.endswith("/"):
        return None
    target = (root / Path(*parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise EngineError(f"the server's zip has an entry outside the study ({name!r}): refused", kind="server")
    return target


def unpack_study_zip(archive, root: Path) -> int:
    """Unpack a study zip (a path or file object) into the existing folder ``root``, zip-slip safe: an entry
    that is absolute, climbs with ``..``, is a link, or resolves outside ``root`` refuses the whole zip.
    Returns the number of files written."""
    import stat

    root = Path(root)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise EngineError(f"the server's answer is not a zip ({e})", kind="server") from None
    files = 0
    with zf:
        for info in zf.infolist():
            if stat.S_ISLNK((info.external_attr >> 16) & 0xFFFF):
                raise EngineError(f"the server's zip has a link ({info.filename!r}): refused", kind="server")
            target = _zip_target(root, info.filename)
            if target is None:
                continue
            if target.exists():
                raise EngineError(f"the server's zip holds {info.filename!r} twice", kind="server")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(DOWNLOAD_CHUNK):
                        dst.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError) as e:
                raise EngineError(f"the server's zip entry {info.filename!r} cannot be read ({e})",
                                  kind="server") from None
            files += 1
    return files


def _rewind(body) -> bool:
    try:
        body.seek(0)
        return True
    except (OSError, ValueError):
        return False
