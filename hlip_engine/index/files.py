"""The index folder on disk: published versions, the CURRENT pointer, checksums and atomic writes.

Layout of an index folder ``DIR``::

    DIR/CURRENT                  one line naming the published version; replaced atomically (atomic.py)
    DIR/versions/<name>/         info.json, index.faiss, embeddings.f16, metadata.sqlite (never edited)
    DIR/build/                   the durable build store (embedding chunks + progress), see durable_store.py
    DIR/shards/rank-NNNNN/       one build store per torchrun rank, merged by rank 0

Why a pointer file: a reader resolves CURRENT once and then only reads a version folder that is
complete and never modified, so it can never see half of a new index, and a build killed at any
moment leaves the previous version (or nothing) published, never a mixture.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes, fsync_dir

FORMAT = "hlip-study-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
VERSIONS = "versions"
BUILD = "build"
SHARDS = "shards"
# the files a published version must hold; info.json lists their sizes and sha256
VERSION_FILES = ("index.faiss", "embeddings.f16", "metadata.sqlite")


class IndexFormatError(ValueError):
    """An index folder that is corrupted, half-copied, from another model or from another format version."""


class ModelMismatchError(IndexFormatError):
    """The index (or its unfinished build) was made by another model or recipe: ``--rebuild`` replaces it."""


class BuildConflictError(IndexFormatError):
    """The folder already holds studies (or a build started otherwise): pass ``--resume`` or ``--rebuild``."""


def sha256_of(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_version_dir(root: Path) -> tuple[Path, str]:
    """A fresh hidden folder to write a version into; it becomes visible only in :func:`publish`.

    Names sort in publication order: a sequence number, then the UTC time for people.
    """
    versions = Path(root) / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    seq = 0
    for p in versions.iterdir():
        digits = p.name.removeprefix(".tmp-").removeprefix("v").split("-")[0]
        if digits.isdigit():
            seq = max(seq, int(digits))
    name = f"v{seq + 1:06d}-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{secrets.token_hex(2)}"
    tmp = versions / f".tmp-{name}"
    tmp.mkdir(parents=True)
    return tmp, name


def publish(root: Path, tmp_dir: Path, name: str, info: dict[str, Any]) -> Path:
    """Seal ``tmp_dir`` (checksums into info.json), move it into place, then switch CURRENT to it."""
    root = Path(root)
    files = {}
    for fname in VERSION_FILES:
        p = tmp_dir / fname
        files[fname] = {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
    info = {**info, "format": FORMAT, "format_version": FORMAT_VERSION, "version": name, "files": files}
    atomic_write_bytes(tmp_dir / "info.json", json.dumps(info, indent=2).encode())
    final = root / VERSIONS / name
    os.rename(tmp_dir, final)
    fsync_dir(final.parent)
    atomic_write_bytes(root / CURRENT, (name + "\n").encode())
    _remove_old_versions(root, keep={name, _previous_name(root, name)})
    return final


def _previous_name(root: Path, current: str) -> str:
    names = sorted(p.name for p in (root / VERSIONS).iterdir() if not p.name.startswith("."))
    older = [n for n in names if n < current]
    return older[-1] if older else ""


def _remove_old_versions(root: Path, keep: set[str]) -> None:
    """Keep the new and the previous version (a reader may have resolved CURRENT just before the switch)."""
    for p in (root / VERSIONS).iterdir():
        if p.name in keep:
            continue
        # hidden .tmp- folders are builds killed mid-write; a live writer holds the build lock, so none is running
        shutil.rmtree(p, ignore_errors=True)


def current_version(root: Path) -> Path:
    """Resolve CURRENT to the published version folder, or explain why there is none."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no study index at {root}")
    pointer = root / CURRENT
    if not pointer.exists():
        if (root / BUILD).exists() or (root / SHARDS).exists():
            raise IndexFormatError(f"{root}: the index build has not finished yet (nothing published); "
                                   "continue it with `hlip index build ... --resume`")
        raise IndexFormatError(f"{root} is not a study index (no {CURRENT} file)")
    name = pointer.read_text().strip()
    version = root / VERSIONS / name
    if not name or "/" in name or not version.is_dir():
        raise IndexFormatError(f"{root}: corrupted or half-copied index: {CURRENT} names version {name!r}, "
                               f"which is missing under {root / VERSIONS}")
    return version


def read_info(version: Path, verify: bool = True) -> dict[str, Any]:
    """Read and check a version's info.json; with ``verify`` also every file's sha256."""
    info_path = version / "info.json"
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{version}: corrupted or half-copied index: info.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{info_path}: corrupted index: info.json is not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexFormatError(f"{info_path}: not an HLIP study index")
    fv = info.get("format_version")
    if fv != FORMAT_VERSION:
        raise IndexFormatError(f"{info_path}: index format version {fv}, this HLIP Explorer reads version "
                               f"{FORMAT_VERSION}; rebuild the index with `hlip index build ... --rebuild`")
    for fname, expect in info.get("files", {}).items():
        p = version / fname
        if not p.exists():
            raise IndexFormatError(f"{p}: corrupted or half-copied index: file is missing")
        size = p.stat().st_size
        if size != expect["bytes"]:
            raise IndexFormatError(f"{p}: corrupted or half-copied index: {size} bytes, expected {expect['bytes']}")
        if verify and sha256_of(p) != expect["sha256"]:
            raise IndexFormatError(f"{p}: corrupted index: checksum does not match info.json")
    missing = [f for f in VERSION_FILES if f not in info.get("files", {})]
    if missing:
        raise IndexFormatError(f"{info_path}: corrupted index: info.json lists no {', '.join(missing)}")
    return info
