"""The receiving area of the listener: every acknowledged instance is on disk, no study is half-handed on.

Layout under ``root`` (by default the index folder)::

    inbox/.partial/            an instance being written (deleted at start: it was never acknowledged)
    inbox/<StudyInstanceUID>/  instances of a study still arriving, one file per SOPInstanceUID
    inbox/.claimed/<uid>.<n>/  a study that went quiet, taken out of the inbox in one rename
    studies/<uid>/             every instance received of a study: what is indexed and opened
    pending/<uid>              a study moved into studies/ and not yet indexed and scored

An instance is written to ``.partial`` (and fsynced, with ``fsync=True``), then renamed into its study's folder,
and only then acknowledged, so a kill -9 loses nothing acknowledged (with fsync, neither does a power cut); the
sender retries the rest. A study that went quiet is
claimed (renamed away, so instances arriving later start a new delivery), its ``pending`` marker written, its
files moved into ``studies/``, and the marker removed once the study is indexed and scored: a restart
re-scores every study with a marker, settles every claimed folder, and restarts the quiet period of the
inbox. Instance and study UIDs are checked before they name anything on disk.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ..atomic import atomic_write_bytes, fsync_dir

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolFull(OSError):
    """Accepting the instance would take the inbox over its size limit."""


def check_uid(uid: str, what: str) -> str:
    uid = str(uid or "").strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not UID_RE.match(uid):
        raise ValueError(f"{what} {uid[:70]!r} is not a valid UID")
    return uid


class Spool:
    """See the module docstring; thread-safe."""

    def __init__(self, root: str | Path, *, max_bytes: int = 20 << 30, fsync: bool = False, owner: bool = True):
        """``owner``: the listener, which recovers what a previous run left; another process that only adds
        instances (the STOW-RS endpoint of ``hlip serve``) passes False and writes through its own partial
        folder, and the listener adopts its studies (``rescan``)."""
        self.root = Path(root)
        self.inbox, self.studies, self.pending_dir = self.root / "inbox", self.root / "studies", self.root / "pending"
        self.partial, self.claimed_dir = self.inbox / ".partial", self.inbox / ".claimed"
        for d in (self.partial, self.claimed_dir, self.studies, self.pending_dir):
            d.mkdir(parents=True, exist_ok=True)
        if owner:  # never acknowledged: the sender sends them again
            for p in self.inbox.glob(".partial*"):
                shutil.rmtree(p, ignore_errors=True)
            self.partial.mkdir()
        else:
            self.partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.inbox))
        self.max_bytes, self.fsync = int(max_bytes), bool(fsync)
        self._lock = threading.Lock()
        self._names, self._counter = f"{os.getpid()}-{secrets.token_hex(4)}-", itertools.count()
        self.bytes = self.inbox_bytes()
        now = time.time()
        # studies still arriving when the last listener stopped: their quiet period starts again now
        self.last: dict[str, float] = {p.name: now for p in self.inbox.iterdir()
                                       if p.is_dir() and not p.name.startswith(".")} if owner else {}
        self.counts: dict[str, int] = {uid: sum(1 for _ in (self.inbox / uid).iterdir()) for uid in self.last}

    def inbox_bytes(self) -> int:
        """Bytes of every instance in the inbox (claimed ones included), as on disk now."""
        return sum(p.stat().st_size for p in self.inbox.rglob("*") if p.is_file())

    def rescan(self) -> list[str]:
        """Adopt studies another process put in the inbox (their quiet period runs from their folder's last
        change), and note instances it added to known ones; the newly adopted UIDs."""
        new = []
        for p in self.inbox.iterdir():
            if p.name.startswith(".") or not p.is_dir():
                continue
            try:
                changed = p.stat().st_mtime
            except FileNotFoundError:  # claimed meanwhile
                continue
            with self._lock:
                if p.name not in self.last:
                    if not UID_RE.match(p.name) or not p.exists():  # not a study, or claimed meanwhile
                        continue
                    new.append(p.name)
                    self.last[p.name] = changed
                    self.counts[p.name] = sum(1 for _ in p.iterdir())
                elif changed > self.last[p.name]:
                    self.last[p.name] = changed
        if new:
            with self._lock:
                self.bytes = self.inbox_bytes()
        return new

    # --- receiving ----------------------------------------------------------------------------
    def store(self, study_uid: str, sop_uid: str, write, size: int) -> bool:
        """Write one instance (``write(f)`` fills the open file) into its study; True for a study's first
        instance in this delivery. Raises SpoolFull over the limit, ValueError for a bad UID, OSError."""
        study_uid, sop_uid = check_uid(study_uid, "StudyInstanceUID"), check_uid(sop_uid, "SOPInstanceUID")
        if self.bytes + size > self.max_bytes:
            raise SpoolFull(f"spool over its limit ({self.bytes + size} > {self.max_bytes} bytes)")
        tmp = self.new_partial()
        try:
            with open(tmp, "wb") as f:
                write(f)
                real = f.tell()
            return self.keep(tmp, study_uid, sop_uid, real)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def new_partial(self) -> Path:
        """A fresh name in this process's partial folder, for an instance being written."""
        return self.partial / f"{self._names}{next(self._counter)}.dcm"

    def keep(self, tmp: Path, study_uid: str, sop_uid: str, size: int) -> bool:
        """Move a written instance (``tmp``, ``size`` bytes, UIDs checked) into its study's folder; True for a
        study's first instance in this delivery. Raises SpoolFull when that would pass the limit."""
        if self.fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with self._lock:
            folder = self.inbox / study_uid
            target = folder / f"{sop_uid}.dcm"
            try:
                old = os.stat(target).st_size
            except FileNotFoundError:
                old = 0
            if self.bytes + size - old > self.max_bytes:
                raise SpoolFull(f"spool over its limit ({self.bytes + size - old} > {self.max_bytes} bytes)")
            first = study_uid not in self.last
            if first:
                folder.mkdir(exist_ok=True)
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # the listener claimed the study this moment: a new delivery
                folder.mkdir(exist_ok=True)
                os.replace(tmp, target)
            self.bytes += size - old
            self.last[study_uid] = time.time()
            self.counts[study_uid] = self.counts.get(study_uid, 0) + (0 if old else 1)
        if self.fsync:
            fsync_dir(folder)
        return first

    # --- handing on ---------------------------------------------------------------------------
    def due(self, quiet_s: float) -> list[str]:
        """Studies with no new instance for ``quiet_s`` seconds, oldest first."""
        now = time.time()
        with self._lock:
            return sorted((u for u, t in self.last.items() if now - t >= quiet_s), key=self.last.get)

    def last_instance(self, study_uid: str) -> float | None:
        with self._lock:
            return self.last.get(study_uid)

    def claim(self, study_uid: str) -> Path:
        """Take a quiet study out of the inbox (instances arriving later start a new delivery)."""
        with self._lock:
            target = self.claimed_dir / f"{study_uid}.{time.time_ns()}"
            try:
                os.rename(self.inbox / study_uid, target)
            finally:  # gone already (or claimed): never tried again
                self.last.pop(study_uid, None)
                self.counts.pop(study_uid, None)
        fsync_dir(self.inbox)
        return target

    def claimed(self) -> list[Path]:
        """Claimed folders not yet settled (after a restart), oldest first."""
        return sorted((p for p in self.claimed_dir.iterdir() if p.is_dir()), key=lambda p: p.name.rsplit(".", 1)[-1])

    def settle(self, claimed: Path) -> tuple[str, Path]:
        """Mark the study pending, move its instances into ``studies/<uid>``; (uid, that folder)."""
        uid = check_uid(claimed.name.rsplit(".", 1)[0], "StudyInstanceUID")
        atomic_write_bytes(self.pending_dir / uid, b"")
        study = self.studies / uid
        study.mkdir(exist_ok=True)
        moved = 0
        for f in sorted(claimed.iterdir()):
            moved += f.stat().st_size
            os.replace(f, study / f.name)
        fsync_dir(study)
        claimed.rmdir()
        fsync_dir(self.claimed_dir)
        with self._lock:
            self.bytes -= moved
        return uid, study

    def pending(self) -> list[str]:
        return sorted(p.name for p in self.pending_dir.iterdir() if not p.name.startswith("."))

    def finish(self, study_uid: str) -> None:
        """The study is indexed and scored (or failed for good): drop its pending marker."""
        (self.pending_dir / study_uid).unlink(missing_ok=True)
        fsync_dir(self.pending_dir)


def fingerprint(folder: Path) -> str:
    """What a study's content is known by: its instances' names (SOPInstanceUIDs) and sizes."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:32]
