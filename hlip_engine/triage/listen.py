"""``Listener``: studies arrive over DICOM, and each complete one is indexed, scored and put on the worklist.

Receiving: ``receivers`` processes share the port (receivers.py; 0 = pynetdicom's threads in this process),
each spooling instances (receive.py, stream.py, spool.py). In this process a watcher adopts the studies they
(and ``hlip serve``'s STOW-RS) put in the inbox and claims every study that has had no new instance for
``quiet_s`` seconds; one worker takes claimed studies in order: moves
them into ``studies/``, loads them (hlip_engine.io), embeds them, adds them to the live index (one entry per
StudyInstanceUID; an unchanged study is neither embedded nor scored again), scores them by the rules and
writes the verdict on the worklist. A study that fails is on the worklist as failed, with the reason.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from pathlib import Path

from .receive import StoreHandler, make_ae
from .rules import load_rules
from .score import Scorer, body_parts
from .spool import Spool, fingerprint
from .worklist import Worklist, worklist_path

log = logging.getLogger("hlip.listen")


class Listener:
    def __init__(self, index_dir: str | Path, checkpoint: str | Path, rules: str | Path | None = None, *,
                 aet: str = "HLIP", host: str = "", port: int = 11112, quiet_s: float = 30.0,
                 spool_dir: str | Path | None = None, max_spool_bytes: int = 20 << 30, fsync: bool = False,
                 device: str | None = None, max_associations: int = 16, results_to: str | None = None,
                 receivers: int = 2):
        self.index_dir, self.checkpoint = Path(index_dir), Path(checkpoint)
        self.rules = load_rules(rules)
        self.aet, self.host, self.port, self.quiet_s = aet, host, int(port), float(quiet_s)
        self.spool_root = Path(spool_dir) if spool_dir else self.index_dir
        self.max_spool_bytes, self.fsync, self.device = max_spool_bytes, fsync, device
        self.max_associations, self.receivers = max_associations, int(receivers)
        self.receiver_procs = None
        self.results_to = None
        if results_to:
            from ..pacs import PacsError, parse_node

            try:
                self.results_to = parse_node(results_to)
            except PacsError as e:
                raise ValueError(f"--results-to: {e}") from None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server = self.writer = self.worklist = self.spool = self.scorer = None
        self.scored = 0

    # --- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model, recover what a previous run left, then listen (returns at once)."""
        from ..index.add_studies import IndexWriter

        self.writer = IndexWriter(self.checkpoint, self.index_dir, device=self.device,
                                  log=lambda msg: log.info("%s", msg))
        try:
            self.scorer = Scorer(self.writer.model, self.rules)
            self.worklist = Worklist(worklist_path(self.index_dir))
            self.spool = Spool(self.spool_root, max_bytes=self.max_spool_bytes, fsync=self.fsync)
            for uid in self.spool.pending():  # moved into studies/ before a stop, never scored
                self._queue.put(("study", uid))
            for folder in self.spool.claimed():
                self._queue.put(("claimed", folder))
            self.handler = StoreHandler(self.spool, on_study=self._arriving)
            if self.receivers > 0:  # receiver processes (receivers.py); this one adopts what they spool
                from .receivers import Receivers

                self.receiver_procs = Receivers(self.receivers, self.spool_root, aet=self.aet, host=self.host,
                                                port=self.port, max_bytes=self.max_spool_bytes, fsync=self.fsync,
                                                max_associations=self.max_associations)
                self.port = self.receiver_procs.start()
            else:
                ae, handlers = make_ae(self.aet, self.handler, max_associations=self.max_associations)
                self.server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
                self.port = self.server.server_address[1]
        except BaseException:
            self.writer.close()
            raise
        for target, name in ((self._watch, "hlip-listen-watch"), (self._work, "hlip-listen-work")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("listening as %s on port %d (%s); %d studies in the index; quiet period %.1f s", self.aet,
                 self.port, f"{self.receivers} receiver processes" if self.receivers else "in this process",
                 len(self.writer.live), self.quiet_s)

    def stop(self) -> None:
        """Stop accepting, finish the study being scored, release the index."""
        if self.server is not None:
            self.server.shutdown()
        if self.receiver_procs is not None:
            self.receiver_procs.stop()
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(120)
        if self.writer is not None:
            self.writer.close()
        if self.worklist is not None:
            self.worklist.close()

    def idle(self) -> bool:
        """Nothing arriving, waiting or being scored."""
        return not self.spool.last and self._queue.unfinished_tasks == 0

    # --- threads ------------------------------------------------------------------------------
    def _arriving(self, study_uid: str) -> None:
        self.worklist.received(study_uid, str(self.spool.studies / study_uid))
        log.info("receiving study %s", study_uid)

    def _watch(self) -> None:
        told = False
        while not self._stop.wait(min(0.2, self.quiet_s / 4 or 0.05)):
            if self.receiver_procs is not None and not told and not self.receiver_procs.alive():
                log.error("a receiver process has stopped; restart hlip listen")
                told = True
            try:
                for uid in self.spool.rescan():  # put there by another process (hlip serve's STOW-RS)
                    self._arriving(uid)
            except OSError as e:
                log.error("cannot look through the inbox: %s", e)
            for uid in self.spool.due(self.quiet_s):
                last = self.spool.last_instance(uid)
                try:
                    folder = self.spool.claim(uid)
                except OSError as e:
                    log.error("study %s: cannot take it from the inbox: %s", uid, e)
                    continue
                self._queue.put(("claimed", folder, last))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            uid = None
            try:
                if item is None:
                    return
                if item[0] == "claimed":
                    uid, folder = self.spool.settle(item[1])
                    last = item[2] if len(item) > 2 else None
                else:
                    uid, folder, last = item[1], self.spool.studies / item[1], None
                self._process(uid, folder, last)
                self.spool.finish(uid)
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one study
                log.error("study %s: %s: %s\n%s", uid or "?", type(e).__name__, e, traceback.format_exc(limit=3))
                if uid is not None:  # on the worklist as failed; its pending marker stays: a restart retries it
                    try:
                        self.worklist.failed(uid, f"{type(e).__name__}: {e}")
                    except Exception:  # noqa: BLE001
                        pass
            finally:
                self._queue.task_done()

    def _send_results(self, uid: str, study, prepared, verdict) -> None:
        """The study's DICOM results (a TID 1500 SR of the rule's findings; a relevance map of the finding
        that raised its priority) stored on ``results_to``; a failure is logged, the verdict stands."""
        from ..report import make_report

        rule = next((r for r in self.rules.rules if r.name == verdict.rule), None)
        if rule is None:
            return
        spec = self.scorer.model_set if rule.prompt_set == "model" else rule.prompt_set
        relevance = []
        if verdict.raised and isinstance(spec, dict):
            phrasing = (spec.get("classes") or {}).get(verdict.finding)
            relevance = [phrasing[0] if isinstance(phrasing, list) else phrasing] if phrasing else []
        try:
            result = make_report(study, self.writer.model, self.index_dir / "results" / uid, prompt_set=spec,
                                 relevance_prompts=relevance, prepared=prepared, send=self.results_to)
            log.info("study %s: results sent to %s (%d objects)", uid, self.results_to,
                     (result.sent or {}).get("instances", 0))
        except Exception as e:  # noqa: BLE001 - the node may be down; the study stays ranked
            log.warning("study %s: results not sent to %s: %s", uid, self.results_to,
                        (str(e).splitlines() or [type(e).__name__])[0])

    def _process(self, uid: str, folder: Path, last_instance: float | None) -> None:
        from ..io import load_study
        from ..preprocessing import preprocess

        t0 = time.time()
        wl, live = self.worklist, self.writer.live
        if wl.get(uid) is None:
            wl.received(uid, str(folder))
        wl.scoring(uid, str(folder), last_instance)
        fp = fingerprint(folder)
        n_files = sum(1 for p in folder.iterdir() if p.is_file())
        known = live.lookup(study_uid=uid)
        row = wl.get(uid)
        if known is not None and known.get("fingerprint") == fp and row and row["scored"]:
            wl.done(uid, priority="", rank=0, finding="", score=None, rule="", probabilities={}, modality="",
                    description="", series=0, instances=n_files, fingerprint=fp, rescored=False)
            log.info("study %s: unchanged (%d instances), already indexed and scored", uid, n_files)
            return
        try:
            study = load_study(folder)
            if not study.scans:
                raise ValueError("no scan could be loaded")
            prepared = preprocess(study, self.writer.recipe, **self.writer.options)
            vec = self.writer.embed([prepared.tensor])[0]
        except Exception as e:  # noqa: BLE001 - one bad study is a failed row, never a stopped listener
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            wl.failed(uid, reason.replace(str(folder), "<study>"))
            log.warning("study %s failed: %s", uid, reason.replace(str(folder), "<study>"))
            return
        modality = (study.modality or "").split("/")[0]
        meta = {"key": f"dicom:{uid}", "path": str(folder), "study_uid": uid, "date": study.date or "",
                "modality": modality, "description": study.description, "n_scans": len(study.scans),
                "fingerprint": fp, "source": "listen"}
        try:
            added = live.add(vec[None], [meta])[0]
        except ValueError:  # an unusable date: recorded without it
            meta["date"] = ""
            added = live.add(vec[None], [meta])[0]
        verdict = self.scorer.score(modality, body_parts(study), vec)
        wl.done(uid, priority=verdict.priority, rank=self.rules.rank(verdict.priority), finding=verdict.finding,
                score=verdict.score, rule=verdict.rule, probabilities=verdict.probabilities, modality=modality,
                description=study.description, series=len(study.scans), instances=n_files, fingerprint=fp)
        self.scored += 1
        if self.results_to is not None:
            self._send_results(uid, study, prepared, verdict)
        since = f", {time.time() - last_instance:.2f} s after its last instance" if last_instance else ""
        log.info("study %s: %s in the index (row %d), %s%s in %.2f s%s", uid, added.outcome, added.row,
                 verdict.priority, f" {verdict.finding} {verdict.score:.2f}" if verdict.finding else "",
                 time.time() - t0, since)
