"""One atomic write for every file the project leaves on disk (index files, checkpoints, NIfTI maps, JSON).

``atomic_write(path)`` yields a temporary path in the same folder; when the block ends without an
exception the temporary file is fsynced and ``os.replace``d onto ``path`` (atomic on POSIX: a reader sees
the old file or the new one, never half of one), and the folder is fsynced so the rename survives a crash.
On an exception the temporary file is removed and ``path`` is left as it was.

    with atomic_write(out / "model.safetensors") as tmp:
        save_file(tensors, tmp)

``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json`` cover the common cases. Works for
folders too (``atomic_dir``): a folder is built under a temporary name and renamed into place.
Torch-free and dependency-free, so the GUI and the training module use it alike.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir",
           "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    _fsync(path)


def _fsync(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    # a hidden sibling: same file system (so os.replace is a rename); it keeps the name's suffixes, because
    # writers such as nibabel pick the format by them (".nii.gz")
    return path.with_name(f".tmp-{secrets.token_hex(4)}.{path.name}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_write: nothing was written to the temporary file for {path}")
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it is renamed to ``path``.

    ``path`` must not exist yet (a folder cannot be replaced atomically over another); on an exception
    the temporary folder and everything in it is removed.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"atomic_dir: {path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
