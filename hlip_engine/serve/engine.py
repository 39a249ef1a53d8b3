"""What ``hlip serve`` holds: the model, the index, the model thread, the pools, and the questions.

Every answer is computed by the engine functions the CLI calls (``hlip_engine.search``,
``hlip_engine.zeroshot``, ``hlip_engine.relevance``, ``Model.prepare`` + ``search.encode_prepared``); the
search and zero-shot answers are the CLI's ``--json`` documents, built by the same functions
(``search.hits_document`` / ``search.like_query``, ``zeroshot.zeroshot_document``). This module only schedules:

- CPU work on a request's study (unpacking, reading DICOM, preprocessing) in a pool of ``workers`` threads;
- the image tower on one model thread (:class:`~hlip_engine.serve.worker.ModelWorker`, micro-batched);
- text (queries, class vectors) and index look-ups on one text thread, so search never queues behind
  a study job;
- admission: at most ``max_queue`` study jobs in flight; past that, 429 with Retry-After.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import math
import threading
import time
import zipfile
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClientError
from .uploads import UploadFolder, load_uploaded_study, unpack
from .worker import ModelWorker

VERSION = "1"


@dataclass
class ServeConfig:
    model: str
    index: str
    token: str
    host: str = "127.0.0.1"
    port: int = 8400
    pacs: str | None = None
    max_upload_mb: int = 2048
    workers: int = 2
    max_queue: int = 32
    max_batch: int = 8
    batch_window_ms: float = 5.0
    device: str | None = None
    tmp_dir: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb) << 20


@dataclass
class StudyJob:
    """A request's study: either an unpacked upload (deleted afterwards) or an indexed/PACS study."""

    study: Any
    label: str
    upload: UploadFolder | None = None


class Engine:
    def __init__(self, config: ServeConfig):
        from hlip_engine.model import load_model
        from hlip_engine.search import checkpoint_identity, open_index

        self.config = config
        self.model = load_model(config.model, device=config.device)
        self.index = open_index(config.index, self.model)  # refuses an index other weights built
        self.identity = checkpoint_identity(config.model)
        self.worker = ModelWorker(self.model, max_batch=config.max_batch, window_s=config.batch_window_ms / 1000.0)
        self.prep = ThreadPoolExecutor(max(1, int(config.workers)), thread_name_prefix="hlip-prep")
        self.text = ThreadPoolExecutor(1, thread_name_prefix="hlip-text")
        self.index_lock = threading.Lock()
        self._classifiers: OrderedDict[str, Any] = OrderedDict()
        self._in_flight = 0
        self._admit_lock = threading.Lock()
        self._text_lock = threading.Lock()
        self._text_pending: list[tuple[str, bool, Future]] = []
        self.text_batches: collections.deque[int] = collections.deque(maxlen=10_000)
        self.requests_429 = 0
        self.pacs_problem = self._check_pacs(config.pacs)

    def close(self) -> None:
        self.worker.stop()
        self.prep.shutdown(wait=False, cancel_futures=True)
        self.text.shutdown(wait=False, cancel_futures=True)
        self.index.close()

    # --- admission --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self):
        """One study job in flight; 429 with Retry-After when ``max_queue`` are already."""
        with self._admit_lock:
            if self._in_flight >= self.config.max_queue:
                self.requests_429 += 1
                wait = self.worker.mean_seconds() * self._in_flight / self.worker.max_batch
                raise ClientError(429, f"the server is busy ({self._in_flight} study jobs queued); retry later",
                                  headers={"Retry-After": str(max(1, math.ceil(wait)))})
            self._in_flight += 1
        try:
            yield
        finally:
            with self._admit_lock:
                self._in_flight -= 1

    async def on_prep(self, fn, *args):
        return await asyncio.wrap_future(self.prep.submit(fn, *args))

    async def on_text(self, fn, *args):
        return await asyncio.wrap_future(self.text.submit(fn, *args))

    # --- info -------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from hlip_engine.relevance import METHODS, default_method
        from hlip_engine.zeroshot import model_zeroshot, prompt_set_names

        cfg = self.model.config
        ident = self.index.identity
        sizes = list(self.worker.batch_sizes)
        return {
            "model": {"name": cfg.get("name"), "architecture": ident.get("architecture") or cfg.get("name"),
                      "embedding_size": int(self.model.embed_dim), "recipe": cfg.get("preprocess"),
                      "model_id": self.identity["model_id"], "fingerprint": self.identity["model_hash"],
                      "device": str(self.model.device), "zeroshot": model_zeroshot(cfg),
                      "relevance": cfg.get("relevance") or {}},
            "index": {"size": len(self.index), "model_fingerprint": ident.get("model_hash"),
                      "model_id": ident.get("model_id"), "dim": ident.get("dim"), "recipe": ident.get("recipe"),
                      "version": self.index.info.get("version"), "skipped": self.index.info.get("skipped", 0)},
            "server": {"api": VERSION, "max_upload_mb": self.config.max_upload_mb,
                       "max_queue": self.config.max_queue, "max_batch": self.worker.max_batch,
                       "in_flight": self._in_flight, "answered_429": self.requests_429,
                       "batches": len(sizes), "largest_batch": max(sizes, default=0),
                       "text_batches": len(self.text_batches), "largest_text_batch": max(self.text_batches, default=0),
                       "pacs": {"node": self.config.pacs, "configured": bool(self.config.pacs) and not self.pacs_problem,
                                "problem": self.pacs_problem}},
            "prompt_sets": prompt_set_names(),
            "relevance_methods": dict(METHODS),
            "default_relevance_method": default_method(self.model),
        }

    # --- studies ----------------------------------------------------------------------------------
    @staticmethod
    def _check_pacs(node: str | None) -> str | None:
        if not node:
            return None
        try:
            from hlip_engine.pacs import parse_node

            parse_node(node)
        except Exception as e:  # noqa: BLE001 - the PACS client may be missing or the node unknown
            return f"{type(e).__name__}: {e}"
        return None

    def _indexed_folder(self, uid: str) -> tuple[Path, str]:
        with self.index_lock:
            row = self.index.find(study_uid=uid)
            meta = self.index.metadata([row])[0] if row is not None else None
        if meta is not None:
            path = Path(meta["path"])
            if not path.exists():
                raise ClientError(404, f"study {uid} is in the index but its files are no longer on the server")
            return path, uid
        if not self.config.pacs:
            raise ClientError(404, f"study {uid} is not in the index (and the server has no --pacs)")
        if self.pacs_problem:
            raise ClientError(400, f"study {uid} is not in the index, and the PACS is not configured "
                                   f"({self.pacs_problem})")
        from hlip_engine.pacs import PacsError, StudyCache, connect

        try:
            with connect(self.config.pacs) as client:
                return Path(client.retrieve(uid, StudyCache())), uid
        except PacsError as e:
            raise ClientError(404, f"study {uid} is not in the index, and {self.config.pacs} says: {e}") from None

    def study_download(self, uid: str) -> tuple[str, list[tuple[Path, str]]]:
        """(zip name, files) of an indexed study, for ``GET /v1/studies/{uid}``; runs in the prep pool.

        Only a study of the index: the UID is a key of the index, never a path. A study of a PACS-built
        index whose folder is gone is retrieved from its node (``study_path_of_hit``); 404 with the reason
        when the UID is not in the index or the study cannot be had."""
        from .downloads import files_or_404

        with self.index_lock:
            row = self.index.find(study_uid=uid)
            meta = self.index.metadata([row])[0] if row is not None else None
        if meta is None or str(meta.get("study_uid") or "") != uid:
            raise ClientError(404, f"study {uid} is not in the index")
        name = f"{uid}.zip"
        path = Path(str(meta.get("path") or "")) if meta.get("path") else None
        if meta.get("node"):
            try:
                from hlip_engine.pacs.hits import study_path_of_hit
            except ImportError as e:
                raise ClientError(404, f"study {uid} is not on the server, and its PACS client is missing "
                                       f"({e})") from None
            from hlip_engine.pacs import PacsError

            try:
                path = Path(study_path_of_hit(dict(meta)))
            except PacsError as e:
                raise ClientError(404, f"study {uid} is not on the server and cannot be retrieved: {e}") from None
            except Exception as e:  # noqa: BLE001 - a node the server cannot reach is not a server fault
                raise ClientError(404, f"study {uid} is not on the server and cannot be retrieved from "
                                       f"{meta.get('node')}: {type(e).__name__}: {e}") from None
        if path is None or not path.exists():
            raise ClientError(404, f"study {uid} is in the index but its files are no longer on the server")
        return name, files_or_404(path, uid)

    def _load(self, source: tuple[str, Any]) -> StudyJob:
        """(kind, value) -> StudyJob; runs in the prep pool. kind: "upload" (UploadFolder) or "uid"."""
        kind, value = source
        if kind == "upload":
            unpack(value.zip_path, value.study_dir, self.config.max_upload_bytes)
            value.zip_path.unlink(missing_ok=True)
            return StudyJob(load_uploaded_study(value.study_dir), "upload", value)
        from hlip_engine.io import load_study

        folder, uid = self._indexed_folder(value)
        try:
            study = load_study(folder)
        except Exception as e:  # noqa: BLE001 - the stored study became unreadable: the client cannot fix it
            raise ClientError(409, f"study {uid} cannot be read on the server: {' '.join(str(e).split())}") from None
        return StudyJob(study, study.uid or uid)

    def _prepare(self, job: StudyJob, for_index: bool = False):
        """The model input of a study: the model's recipe (zero-shot, relevance, embed) or the index's (search)."""
        try:
            if for_index:
                from hlip_engine.preprocessing import preprocess
                from hlip_engine.search import index_recipe

                recipe, options = index_recipe(self.index, self.model)
                return preprocess(job.study, recipe, **options)
            return self.model.prepare(job.study)
        except Exception as e:  # noqa: BLE001 - a study the recipe cannot use is the input's fault
            raise ClientError(422, f"the study cannot be prepared for the model: {' '.join(str(e).split())}") \
                from None

    def _load_and_prepare(self, source, for_index: bool = False):
        job = self._load(source)
        return job, self._prepare(job, for_index)

    async def prepared(self, source, for_index: bool = False):
        return await self.on_prep(self._load_and_prepare, source, for_index)

    # --- search -----------------------------------------------------------------------------------
    def _document(self, vector, query: str, k: int, filters: dict, exclude) -> dict:
        """``search.hits_document`` (the CLI's ``--json`` document) under the index lock; bad filters are 422."""
        from hlip_engine import search as retrieval

        with self.index_lock:
            self.index.refresh()  # studies added since (hlip index add, hlip listen): one small read otherwise
            try:
                return retrieval.hits_document(self.index, vector, query=query, k=k, filters=filters,
                                               exclude=exclude, index_name=self.config.index)
            except ValueError as e:
                raise ClientError(422, str(e)) from None

    def _text_vector(self, text: str, plain: bool) -> Future:
        """Queue a query text for the text thread; queries that queue together share one text forward."""
        fut: Future = Future()
        with self._text_lock:
            self._text_pending.append((text, plain, fut))
        self.text.submit(self._drain_texts)
        return fut

    def _drain_texts(self) -> None:
        """On the text thread: encode every queued query. One alone goes through ``search.text_vector`` (the
        CLI's path); several go through the same ``model.encode_query`` in one batch, on one CPU thread as
        ``text_vector`` does (equal to one at a time to float rounding, 3e-7 measured)."""
        import torch

        from hlip_engine import search as retrieval

        with self._text_lock:
            items, self._text_pending = self._text_pending, []
        for plain in (False, True):
            group = [(t, f) for t, p, f in items if p == plain and f.set_running_or_notify_cancel()]
            blank = [(t, f) for t, f in group if not str(t).strip()]
            group = [(t, f) for t, f in group if str(t).strip()]
            for text, fut in blank + (group if len(group) == 1 else []):
                try:
                    fut.set_result(retrieval.text_vector(self.model, text, centre=not plain))
                except ValueError as e:
                    fut.set_exception(ClientError(422, str(e)))
                except BaseException as e:  # noqa: BLE001 - handed to the request
                    fut.set_exception(e)
            if len(group) < 2:
                continue
            threads = torch.get_num_threads()
            if self.model.device.type == "cpu":
                torch.set_num_threads(1)  # as text_vector: short texts lose time to OpenMP on a busy CPU
            try:
                with torch.inference_mode():
                    vectors = self.model.encode_query([str(t).strip() for t, _f in group],
                                                      centre=not plain).float().cpu().numpy()
            except BaseException as e:  # noqa: BLE001
                for _t, fut in group:
                    fut.set_exception(e)
                continue
            finally:
                torch.set_num_threads(threads)
            self.text_batches.append(len(group))
            for (_t, fut), vec in zip(group, vectors):
                fut.set_result(vec[None])

    def _like(self, study, label: str = ""):
        """``search.like_query`` under the index lock: the stored vector of a study of the index, or none."""
        from hlip_engine import search as retrieval

        with self.index_lock:
            self.index.refresh()
            return retrieval.like_query(self.index, study, label=label)

    async def search(self, *, text: str | None, study_uid: str | None, k: int, filters: dict,
                     plain: bool = False) -> dict:
        from hlip_engine.search import text_label

        if text is not None:
            vector = await asyncio.wrap_future(self._text_vector(text, plain))
            return await self.on_text(self._document, vector, text_label(text), k, filters, ())
        like = await self.on_text(self._like, study_uid)
        if like.vector is None:
            raise ClientError(404, f"study {study_uid} is not in the index")
        return await self.on_text(self._document, like.vector, like.label, k, filters, like.exclude)

    async def search_like(self, source, k: int, filters: dict) -> dict:
        """"More like this" for an uploaded study: a study of the index (by its StudyInstanceUID) is searched
        with its stored vector, as the CLI does; any other is encoded as the index encoded its studies."""
        job = await self.on_prep(self._load, source)
        like = await self.on_text(self._like, job.study, job.label)
        vector = like.vector
        if vector is None:
            prepared = await self.on_prep(self._prepare, job, True)
            vector = await asyncio.wrap_future(self.worker.encode(prepared.tensor))
        return await self.on_text(self._document, vector, like.label, k, filters, like.exclude)

    # --- zero-shot ----------------------------------------------------------------------------------
    def _classifier(self, spec: dict):
        from hlip_engine.zeroshot import build_classifier

        key = json.dumps(spec, sort_keys=True)
        if key in self._classifiers:
            self._classifiers.move_to_end(key)
            return self._classifiers[key]
        try:
            clf = build_classifier(self.model, **spec)
        except (ValueError, KeyError, TypeError) as e:
            raise ClientError(422, str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from None
        self._classifiers[key] = clf
        while len(self._classifiers) > 64:
            self._classifiers.popitem(last=False)
        return clf

    async def zeroshot(self, source, spec: dict) -> dict:
        """``zeroshot.zeroshot_document`` for the study; with no prompts named, the model's default set for
        the study (``zeroshot.default_prompt_set``), chosen once the study has been read."""
        from hlip_engine.zeroshot import classifier_request, zeroshot_document

        def request(study=None) -> dict:
            try:
                return classifier_request(self.model.config, study, **spec)[0]
            except ValueError as e:
                raise ClientError(422, str(e)) from None

        named = spec.get("prompt_set") is not None or spec.get("prompts") is not None
        if named:  # a bad prompt fails before the study loads
            classifier = await self.on_text(self._classifier, request())
        job, prepared = await self.prepared(source)
        if not named:
            classifier = await self.on_text(self._classifier, request(job.study))
        embedding = await asyncio.wrap_future(self.worker.encode(prepared.tensor))
        return zeroshot_document(self.model, job.study, np.asarray(embedding), classifier=classifier,
                                 label=job.label, **spec)

    # --- embed --------------------------------------------------------------------------------------
    async def embed(self, source) -> dict:
        job, prepared = await self.prepared(source)
        vec = np.asarray(await asyncio.wrap_future(self.worker.encode(prepared.tensor)), dtype=np.float32)
        return {"study": job.label, "model": self.model.config.get("name"), "recipe": prepared.recipe,
                "scans": len(prepared.scan_indices), "dim": int(vec.shape[0]),
                "embedding": [float(v) for v in vec]}

    # --- relevance ----------------------------------------------------------------------------------
    async def relevance(self, source, prompt, templates, method: str | None, output: int) -> bytes:
        from hlip_engine.relevance import relevance

        job, prepared = await self.prepared(source)

        def explain():
            try:
                return relevance(self.model, prepared, prompt, templates=templates, method=method, output=output)
            except ValueError as e:
                raise ClientError(422, str(e)) from None

        t0 = time.perf_counter()
        rel = await asyncio.wrap_future(self.worker.call(explain))
        seconds = time.perf_counter() - t0
        return await self.on_prep(self._relevance_zip, job, rel, seconds)

    async def report(self, source, prompt_set: str | None, relevance_prompts: list[str], method: str | None,
                     send: bool) -> bytes:
        """``hlip report`` for the study: the SR and relevance maps zipped, stored on the server's own PACS
        node (``--pacs``) when ``send`` (never a node the client names)."""
        from hlip_engine.pacs import PacsError
        from hlip_engine.report import report_archive
        from hlip_engine.report.compute import analyse

        if send and (not self.config.pacs or self.pacs_problem):
            raise ClientError(422, "send: this server has no PACS node to store on (start it with --pacs NODE)")
        job, prepared = await self.prepared(source)

        def run():
            try:
                return analyse(self.model, job.study, prompt_set=prompt_set, relevance_prompts=relevance_prompts,
                               method=method, prepared=prepared)
            except ValueError as e:
                raise ClientError(422, str(e)) from None

        analysis = await asyncio.wrap_future(self.worker.call(run))

        def archive() -> bytes:
            try:
                return report_archive(analysis, send=self.config.pacs if send else None,
                                      tmp_dir=self.config.tmp_dir)
            except PacsError as e:
                raise ClientError(502, str(e)) from None

        return await self.on_prep(archive)

    def _relevance_zip(self, job: StudyJob, rel, seconds: float) -> bytes:
        """relevance.json (the CLI's summary + one entry per NIfTI) + one NIfTI per scan + tokens.npy."""
        import tempfile

        from hlip_engine.relevance import save_nifti
        from hlip_engine.relevance.export import _safe_name

        summary = rel.summary()
        summary.update({"study": job.label, "model": self.model.config.get("name"), "seconds": round(seconds, 3)})
        buf = io.BytesIO()
        scans = []
        with tempfile.TemporaryDirectory(prefix="hlip-relevance-", dir=self.config.tmp_dir) as tmp, \
                zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
            for k, volume in zip(rel.volume_scans or [], rel.volumes or []):
                scan = job.study.scans[k]
                name = f"scan{k:02d}_{_safe_name(scan.description or scan.series_uid or 'scan')}.nii.gz"
                save_nifti(volume, scan, Path(tmp) / name)
                out.write(Path(tmp) / name, name)
                scans.append({"scan": int(k), "file": name, "shape": list(volume.shape),
                              "series_uid": scan.series_uid, "description": scan.description})
            tokens = io.BytesIO()
            np.save(tokens, np.asarray(rel.tokens, dtype=np.float32))
            out.writestr("tokens.npy", tokens.getvalue())
            summary["nifti"] = [s["file"] for s in scans]
            summary["scans"] = scans
            out.writestr("relevance.json", json.dumps(summary, indent=1))
        return buf.getvalue()

