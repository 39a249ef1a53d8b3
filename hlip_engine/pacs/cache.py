"""The local study cache: one folder per StudyInstanceUID, one sub-folder per series, size-bounded LRU.

Layout (``root`` is ``$HLIP_PACS_CACHE``, else ``$HLIP_NAPARI_CACHE_DIR/pacs``, else the platform's cache
folder for ``hlip-napari``)::

    root/<StudyInstanceUID>/<SeriesInstanceUID>/000001.dcm ...   the DICOM files, nothing else
    root/.meta/<StudyInstanceUID>.json                            which series are complete, last use, node
    root/.locks/<StudyInstanceUID>.lock                           one retrieving process per study

A series folder appears only when the whole series has arrived: it is written under a temporary name by
:func:`hlip_engine.atomic.atomic_dir` and renamed into place, so a loader never sees half a series. A
temporary folder left by a killed process is swept away the next time that study is retrieved. A study is
served from the cache when its record says every series it asked for is complete and the folders are there.
Eviction drops the least recently used studies until the cache fits ``max_bytes``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_dir, atomic_write_json
from .errors import PacsError
from .query import check_uid

DEFAULT_MAX_BYTES = 20 * 1024**3


def default_cache_dir() -> Path:
    env = os.environ.get("HLIP_PACS_CACHE")
    if env:
        return Path(env)
    env = os.environ.get("HLIP_NAPARI_CACHE_DIR")
    if env:
        return Path(env) / "pacs"
    import platformdirs

    return Path(platformdirs.user_cache_dir("hlip-napari")) / "pacs"


def default_max_bytes() -> int:
    env = os.environ.get("HLIP_PACS_CACHE_GB")
    if env:
        try:
            return int(float(env) * 1024**3)
        except ValueError:
            raise PacsError(f"HLIP_PACS_CACHE_GB={env!r} is not a number of gigabytes") from None
    return DEFAULT_MAX_BYTES


def _tree_bytes(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


class StudyCache:
    """A folder of retrieved studies. ``max_bytes=None`` takes ``$HLIP_PACS_CACHE_GB`` (default 20 GB)."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.max_bytes = int(max_bytes) if max_bytes is not None else default_max_bytes()

    def __repr__(self) -> str:
        return f"StudyCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    # --- paths -----------------------------------------------------------------------------------
    def study_dir(self, study_uid: str) -> Path:
        return self.root / check_uid(study_uid, "StudyInstanceUID")

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return self.study_dir(study_uid) / check_uid(series_uid, "SeriesInstanceUID")

    def _meta_path(self, study_uid: str) -> Path:
        return self.root / ".meta" / f"{check_uid(study_uid, 'StudyInstanceUID')}.json"

    # --- records ---------------------------------------------------------------------------------
    def record(self, study_uid: str) -> dict:
        try:
            rec = json.loads(self._meta_path(study_uid).read_text())
            return rec if isinstance(rec, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_record(self, study_uid: str, rec: dict) -> None:
        atomic_write_json(self._meta_path(study_uid), rec, indent=None)

    def has_series(self, study_uid: str, series_uid: str) -> bool:
        rec = self.record(study_uid)
        return series_uid in rec.get("series", {}) and self.series_dir(study_uid, series_uid).is_dir()

    def complete(self, study_uid: str, series: list[str] | None = None) -> bool:
        """Whether the study (every series of it, or the ``series`` named) is in the cache, whole."""
        rec = self.record(study_uid)
        wanted = series if series else rec.get("all_series")
        if not wanted:
            return False
        return all(self.has_series(study_uid, s) for s in wanted)

    def touch(self, study_uid: str, **fields) -> None:
        rec = self.record(study_uid)
        rec.update(fields)
        rec["study_uid"] = study_uid
        rec["last_used"] = time.time()
        self._write_record(study_uid, rec)

    def mark_series(self, study_uid: str, series_uid: str, instances: int) -> None:
        rec = self.record(study_uid)
        rec.setdefault("series", {})[series_uid] = {"instances": int(instances)}
        rec["study_uid"] = study_uid
        rec["last_used"] = time.time()
        self._write_record(study_uid, rec)

    # --- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, study_uid: str) -> Iterator[None]:
        """Hold the study's lock: one process retrieves (or evicts) a study at a time."""
        path = self.root / ".locks" / f"{check_uid(study_uid, 'StudyInstanceUID')}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def sweep(self, study_uid: str) -> None:
        """Remove temporary series folders a killed retrieve left in the study folder (call under the lock)."""
        folder = self.study_dir(study_uid)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and not self.has_series(study_uid, entry.name):
                shutil.rmtree(entry, ignore_errors=True)  # a folder no record vouches for

    @contextlib.contextmanager
    def writing_series(self, study_uid: str, series_uid: str) -> Iterator[Path]:
        """A temporary folder for one series; renamed into place only if the block ends without error."""
        final = self.series_dir(study_uid, series_uid)
        if final.exists():
            shutil.rmtree(final)  # an unvouched leftover (the record did not name it)
        with atomic_dir(final) as tmp:
            yield tmp

    # --- listing and eviction --------------------------------------------------------------------
    def studies(self) -> list[dict]:
        """Every cached study: ``{study_uid, path, bytes, last_used, series, complete}``, oldest use first."""
        out = []
        if not self.root.is_dir():
            return out
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            rec = self.record(entry.name) if _is_uid(entry.name) else {}
            out.append({"study_uid": entry.name, "path": str(entry), "bytes": _tree_bytes(entry),
                        "last_used": float(rec.get("last_used", entry.stat().st_mtime)),
                        "series": len(rec.get("series", {})),
                        "complete": bool(rec) and self.complete(entry.name), "node": rec.get("node", "")})
        return sorted(out, key=lambda r: r["last_used"])

    def size(self) -> int:
        return sum(s["bytes"] for s in self.studies())

    def evict(self, keep: tuple[str, ...] | set[str] = (), max_bytes: int | None = None) -> list[str]:
        """Drop least recently used studies until the cache fits; returns the UIDs dropped."""
        limit = self.max_bytes if max_bytes is None else int(max_bytes)
        studies = self.studies()
        total = sum(s["bytes"] for s in studies)
        dropped = []
        for s in studies:
            if total <= limit:
                break
            if s["study_uid"] in keep:
                continue
            self.remove(s["study_uid"])
            total -= s["bytes"]
            dropped.append(s["study_uid"])
        return dropped

    def remove(self, study_uid: str) -> None:
        if not _is_uid(study_uid):
            shutil.rmtree(self.root / study_uid, ignore_errors=True)
            return
        with self.lock(study_uid):
            # the record goes first: a study without its record is never served, whatever is left on disk
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(study_uid).unlink()
            shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)

    def clear(self) -> list[str]:
        """Remove every cached study; returns their UIDs."""
        uids = [s["study_uid"] for s in self.studies()]
        for uid in uids:
            self.remove(uid)
        meta = self.root / ".meta"
        if meta.is_dir():
            for stale in meta.glob("*.json"):
                stale.unlink(missing_ok=True)
        return uids


def _is_uid(name: str) -> bool:
    try:
        check_uid(name)
        return True
    except PacsError:
        return False
