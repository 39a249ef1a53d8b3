"""Helpers of the triage tests: phantom studies (the demo's, cloned under new UIDs), a free loopback port,
the real `hlip listen` in a subprocess and dcmtk's storescu."""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "hlip_engine" / "weights" / "hlip_demo.safetensors"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TCP_NODELAY": "1", "OMP_NUM_THREADS": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clone_study(src: Path, dst: Path, tag: str) -> Path:
    """A copy of a phantom study under new Study/Series/SOP Instance UIDs (derived from ``tag``)."""
    import pydicom
    from pydicom.uid import generate_uid

    new = {}

    def uid(old: str) -> str:
        if old not in new:
            new[old] = generate_uid(entropy_srcs=[tag, old])
        return new[old]

    for f in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, kw, uid(str(getattr(ds, kw))))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
    return dst


def study_uid_of(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


def storescu(port: int, *paths, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    args = ["storescu", "-v", "-nh", "-aec", "HLIP", "-to", "20", "+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(port),
            *map(str, paths)]
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


class ListenerProcess:
    """`hlip listen` in a subprocess (stderr to a log file), ready once it says it is listening."""

    def __init__(self, index: Path, port: int, log: Path, *extra: str, quiet_s: float = 2.0):
        self.index, self.port, self.log = index, port, log
        self.args = [sys.executable, "-m", "hlip_engine.cli", "listen", "--model", str(DEMO_MODEL), "--index",
                     str(index), "--port", str(port), "--quiet-s", str(quiet_s), "--device", "cpu", *extra]
        self.proc = None

    def start(self, timeout: float = 120) -> ListenerProcess:
        before = len(self.log.read_text()) if self.log.exists() else 0  # an earlier run's lines come first
        f = open(self.log, "a")  # noqa: SIM115 - the child writes to it until it ends
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        f.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if f"on port {self.port}" in self.log.read_text()[before:]:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"hlip listen ended ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError("hlip listen did not start:\n" + self.log.read_text()[-3000:])

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def worklist_rows(index: Path) -> list[dict]:
    db = index / "worklist.sqlite"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM studies ORDER BY priority_rank, arrived_at")]
    finally:
        con.close()


def wait_done(index: Path, uids: set[str], timeout: float = 180) -> list[dict]:
    """Wait until every study in ``uids`` is done or failed on the worklist; the rows."""
    deadline = time.time() + timeout
    rows = []
    while time.time() < deadline:
        rows = worklist_rows(index)
        finished = {r["study_uid"] for r in rows if r["status"] in ("done", "failed")}
        if uids <= finished:
            return rows
        time.sleep(0.3)
    raise AssertionError(f"not finished in {timeout} s: {sorted(uids - finished)}; rows: {rows}")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
