"""An indexed study's files, streamed as a zip (``GET /v1/studies/{study_uid}``), so that a search hit of the
server's index opens on a workstation.

The server looks the UID up in its index and sends the files of the folder (or the one NIfTI file) the index
recorded, never a path the client names: the UID is only ever a key of the index. A study of a PACS-built
index whose folder is gone is retrieved from the node the index recorded
(:func:`hlip_engine.pacs.hits.study_path_of_hit`). Only regular files inside the study's folder go into the
zip, under their names relative to it: hidden files and links that lead outside the folder are left out, so
no entry names a path outside the study. The zip is written as it is sent (stored, not deflated: DICOM pixel
data compresses poorly and the CPU is the model's), a megabyte at a time.
"""
from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ClientError

CHUNK = 1 << 20


def study_files(root: Path) -> list[tuple[Path, str]]:
    """(file, name in the zip) for every file of the study at ``root`` (a folder, or one NIfTI/DICOM file)."""
    if root.is_file():
        return [(root, root.name)]
    base = root.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(base):  # os.walk does not follow links to folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                continue  # a dangling or looping link
            if not real.is_relative_to(base) or not real.is_file():
                continue  # a link out of the study's folder: never sent
            out.append((path, path.relative_to(base).as_posix()))
    return out


class _Sink(io.RawIOBase):
    """A write-only, non-seekable stream that hands on what was written (zipfile then writes data
    descriptors, so the archive streams)."""

    def __init__(self):
        super().__init__()
        self._parts: list[bytes] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        self._parts.append(data)
        self._size += len(data)
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data

    @property
    def pending(self) -> int:
        return sum(len(p) for p in self._parts)

    def tell(self) -> int:  # zipfile records offsets from tell() on streams it cannot seek
        return self._size


def zip_stream(files: list[tuple[Path, str]]) -> Iterator[bytes]:
    """The zip of ``files``, in chunks of about :data:`CHUNK` bytes, written while it is sent."""
    sink = _Sink()
    # strict_timestamps=False: a file dated before 1980 (DICOM copied off old media) is stored as 1980-01-01
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True, strict_timestamps=False) as archive:
        for path, name in files:
            info = zipfile.ZipInfo.from_file(path, name, strict_timestamps=False)
            info.compress_type = zipfile.ZIP_STORED
            with open(path, "rb") as src, archive.open(info, "w") as dst:  # zip64 past 2 GB, from the size
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if sink.pending >= CHUNK:
                        yield sink.take()
            if sink.pending >= CHUNK:
                yield sink.take()
    tail = sink.take()
    if tail:
        yield tail


def files_or_404(root: Path, uid: str) -> list[tuple[Path, str]]:
    files = study_files(root)
    if not files:
        raise ClientError(404, f"study {uid} is in the index but its folder on the server holds no files")
    return files
