"""Uploaded studies: a size-limited request body -> a private temporary folder -> a Study, then deleted.

The body is streamed to disk and counted as it arrives (413 past ``--max-upload-mb``, before the rest is
read); the zip is unpacked entry by entry into a folder only this process can read (``mkdtemp``, 0700):
an entry that is absolute, climbs with ``..``, is a link, or lands outside the folder refuses the whole
upload (zip-slip), and the unpacked total is capped too (zip bombs). The folder is then read by the same
loader as a local study (:func:`hlip_engine.io.load_study`) and removed when the request ends, whatever
happened. Nothing here reads a path a client names.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from .errors import ClientError

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
MAX_ENTRIES = 200_000  # files in one study zip (a 4-D DICOM study has some thousands)
UNPACK_FACTOR = 8  # unpacked bytes may be this many times --max-upload-mb (DICOM deflates about 2-4x)
CHUNK = 1 << 20


class UploadFolder:
    """A private temporary folder for one request; ``cleanup()`` (idempotent) removes it."""

    def __init__(self, parent: str | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="hlip-upload-", dir=parent))  # mode 0700
        self.zip_path = self.path / "upload.zip"
        self.study_dir = self.path / "study"

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> UploadFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


async def receive_body(chunks: AsyncIterator[bytes], target: Path, limit_bytes: int,
                       declared: str | None = None) -> int:
    """Write the request body to ``target``, stopping with 413 as soon as it passes ``limit_bytes``."""
    if declared is not None:
        try:
            if int(declared) > limit_bytes:
                raise ClientError(413, f"upload of {int(declared)} bytes is over the server's limit of "
                                       f"{limit_bytes // (1 << 20)} MB (--max-upload-mb)")
        except ValueError:
            raise ClientError(400, f"Content-Length {declared!r} is not a number") from None
    size = 0
    with open(target, "wb") as f:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit_bytes:
                raise ClientError(413, f"upload is over the server's limit of {limit_bytes // (1 << 20)} MB "
                                       "(--max-upload-mb)")
            f.write(chunk)
    if size == 0:
        raise ClientError(400, "empty upload: send the study's DICOM/NIfTI files as a zip")
    return size


class AnswerBeforeClose:
    """ASGI middleware: a 4xx given before the request's body was read (a wrong token, a wrong type) first
    reads and drops the rest of the body, up to ``limit_bytes``.

    A client sends the whole body before it reads the answer (urllib, requests, curl); a server that answers
    and closes mid-upload gives it a broken pipe instead of the reason (web servers call this a lingering
    close). A body over the limit (a 413) is not read: the connection is closed on it as before.
    """

    def __init__(self, app, limit_bytes: int):
        self.app, self.limit_bytes = app, int(limit_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_done = False

        async def tracked_receive():
            nonlocal body_done
            message = await receive()
            body_done = body_done or message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def answer(message):
            if (message["type"] == "http.response.start" and not body_done and 400 <= message["status"] < 500
                    and message["status"] != 413 and self._declared(scope) <= self.limit_bytes):
                size = 0
                while not body_done and size <= self.limit_bytes:
                    size += len((await tracked_receive()).get("body", b""))
            await send(message)

        await self.app(scope, tracked_receive, answer)

    @staticmethod
    def _declared(scope) -> int:
        value = dict(scope.get("headers") or []).get(b"content-length", b"0")
        return int(value) if value.isdigit() else 1 << 62


def _entry_target(root: Path, name: str) -> Path | None:
    """Where a zip entry may be written inside ``root``; None for entries to skip (folders, macOS junk)."""
    if "\x00" in name:
        raise ClientError(400, f"zip entry {name!r} has a NUL byte in its name")
    clean = name.replace("\\", "/")
    pure = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in pure.parts:
        raise ClientError(400, f"zip entry {name!r} points outside the upload folder (refused)")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or clean.endswith("/") or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return None
    target = (root / Path(*parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ClientError(400, f"zip entry {name!r} points outside the upload folder (refused)")
    return target


def unpack(zip_path: Path, root: Path, limit_bytes: int) -> int:
    """Unpack a study zip into ``root`` (zip-slip and zip-bomb safe); returns the number of files."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ClientError(400, f"the upload is not a zip file ({e}); send the study's files as a zip") from None
    root.mkdir(mode=0o700)
    budget = limit_bytes * UNPACK_FACTOR
    written = files = 0
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ClientError(413, f"the zip holds {len(infos)} entries, more than {MAX_ENTRIES}")
        for info in infos:
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                raise ClientError(400, f"zip entry {info.filename!r} is a symbolic link (refused)")
            target = _entry_target(root, info.filename)
            if target is None:
                continue
            if target.exists():
                raise ClientError(400, f"zip entry {info.filename!r} appears twice")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > budget:
                            raise ClientError(413, f"the zip unpacks to more than {budget // (1 << 20)} MB")
                        dst.write(chunk)
            except ClientError:
                raise
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError, EOFError) as e:
                raise ClientError(400, f"zip entry {info.filename!r} cannot be read ({e})") from None
            files += 1
    if files == 0:
        raise ClientError(422, "the zip holds no files: send the study's DICOM/NIfTI files")
    return files


def study_root(root: Path) -> Path:
    """The folder to load: ``root``, or the one folder it holds (a zipped study folder)."""
    here = root
    while True:
        entries = [p for p in here.iterdir()]
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            here = entries[0]
        else:
            return here


def load_uploaded_study(folder: Path):
    """The Study in an unpacked upload, by the project's one loader; unreadable input -> 422 with the reason."""
    from hlip_engine.io import load_study

    path = study_root(folder)
    try:
        study = load_study(path)
    except ClientError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a malformed upload makes a reader raise is the upload's fault
        raise ClientError(422, f"the upload holds no readable study: {_one_line(e, folder)}") from None
    if not getattr(study, "scans", None):
        why = "; ".join(f"{Path(str(item)).name}: {reason}" for item, reason in list(study.skipped)[:2])
        raise ClientError(422, "the upload holds no readable scan" + (f" ({why})" if why else ""))
    return study


def _one_line(error: BaseException, folder: Path) -> str:
    """An error message on one line, with the private folder's path taken out."""
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error) or type(error).__name__
    for p in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
        text = text.replace(p + os.sep, "").replace(p, "upload")
    return " ".join(text.split())[:500]
