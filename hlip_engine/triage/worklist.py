"""The worklist: one SQLite row per received study, ordered by priority, then arrival.

Status runs received -> scoring -> done (or failed, with the reason); a study that receives more instances
afterwards goes back to received and is scored again. The file lives beside the index (``DIR/worklist.sqlite``)
in WAL mode, so the napari widget and ``hlip worklist`` read it while the listener writes. It holds UIDs,
the study's modality and description, and the triage verdict; never a patient's name or ID.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

FILE = "worklist.sqlite"
STATUSES = ("received", "scoring", "done", "failed")
UNRANKED = 1_000_000  # priority rank of a study not scored yet: after every scored one

SCHEMA = """CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,            -- received / scoring / done / failed
    reason TEXT NOT NULL DEFAULT '', -- why it failed
    arrived_at REAL NOT NULL,        -- first instance received (epoch s)
    last_instance_at REAL,           -- latest instance received
    completed_at REAL,               -- scored (done) or given up (failed)
    priority TEXT NOT NULL DEFAULT '',
    priority_rank INTEGER NOT NULL DEFAULT 1000000,
    finding TEXT NOT NULL DEFAULT '', score REAL,
    rule TEXT NOT NULL DEFAULT '', probabilities TEXT NOT NULL DEFAULT '{}',
    modality TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
    instances INTEGER NOT NULL DEFAULT 0, series INTEGER NOT NULL DEFAULT 0,
    path TEXT NOT NULL DEFAULT '',   -- the received study's folder (what the viewer opens)
    fingerprint TEXT NOT NULL DEFAULT '',
    scored INTEGER NOT NULL DEFAULT 0 -- how many times it was scored
)"""
ORDER = "ORDER BY priority_rank, arrived_at, study_uid"


def worklist_path(index_dir: str | Path) -> Path:
    return Path(index_dir) / FILE


class Worklist:
    """Read and write the worklist of one index folder (safe to share between threads)."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no worklist here (has `hlip listen` received a study?)")
            self.con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=FULL")
            self.con.execute(SCHEMA)
            self.con.execute("CREATE INDEX IF NOT EXISTS studies_order ON studies(priority_rank, arrived_at)")
        self.con.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self.con.execute(sql, args)

    def received(self, study_uid: str, path: str, *, at: float | None = None, instances: int = 0) -> None:
        """A study got instances: a new row, or an existing one back to 'received' (to be scored again)."""
        at = time.time() if at is None else at
        self._write("INSERT INTO studies (study_uid, status, arrived_at, last_instance_at, path, instances) "
                    "VALUES (?, 'received', ?, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET status='received', "
                    "reason='', last_instance_at=excluded.last_instance_at, instances=instances+excluded.instances",
                    (study_uid, at, at, path, instances))

    def scoring(self, study_uid: str, path: str, last_instance_at: float | None = None) -> None:
        """Being indexed and scored; ``last_instance_at``: when its latest instance arrived."""
        self._write("UPDATE studies SET status='scoring', path=?, last_instance_at=COALESCE(?, last_instance_at) "
                    "WHERE study_uid=?", (path, last_instance_at, study_uid))

    def done(self, study_uid: str, *, priority: str, rank: int, finding: str, score: float | None, rule: str,
             probabilities: dict[str, float], modality: str, description: str, series: int, instances: int,
             fingerprint: str, rescored: bool = True) -> None:
        """Scored: the verdict; ``rescored=False`` keeps the earlier verdict (the study had not changed)."""
        now = time.time()
        if rescored:
            self._write("UPDATE studies SET status='done', reason='', completed_at=?, priority=?, priority_rank=?, "
                        "finding=?, score=?, rule=?, probabilities=?, modality=?, description=?, series=?, "
                        "instances=?, fingerprint=?, scored=scored+1 WHERE study_uid=?",
                        (now, priority, rank, finding, score, rule, json.dumps(probabilities), modality, description,
                         series, instances, fingerprint, study_uid))
        else:
            self._write("UPDATE studies SET status='done', reason='', completed_at=? WHERE study_uid=?",
                        (now, study_uid))

    def failed(self, study_uid: str, reason: str) -> None:
        self._write("UPDATE studies SET status='failed', reason=?, completed_at=? WHERE study_uid=?",
                    (reason, time.time(), study_uid))

    def get(self, study_uid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.con.execute("SELECT * FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        return _as_dict(row) if row else None

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every study, most urgent first, then first arrived first."""
        where, args = ("WHERE status=? ", (status,)) if status else ("", ())
        with self._lock:
            rows = self.con.execute(f"SELECT * FROM studies {where}{ORDER}", args).fetchall()
        return [_as_dict(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["probabilities"] = json.loads(d.get("probabilities") or "{}")
    return d


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The worklist as text lines (what ``hlip worklist`` prints)."""
    if not rows:
        return ["(no studies)"]
    out = [f"{'PRIORITY':<8}  {'STATUS':<8}  {'ARRIVED':<19}  {'MOD':<3}  {'FINDING':<14}  {'SCORE':>5}  STUDY"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["arrived_at"]))
        score = f"{r['score']:.2f}" if r["score"] is not None else ""
        line = (f"{r['priority'] or '-':<8}  {r['status']:<8}  {when:<19}  {r['modality'] or '-':<3}  "
                f"{r['finding'] or '-':<14}  {score:>5}  {r['study_uid']}")
        if r["status"] == "failed":
            line += f"  ({r['reason']})"
        out.append(line)
    return out
