"""Where a build's studies come from: a library folder, or a PACS node (``hlip index build NODE ...``), and how
one study is prepared for encoding (``prepare_study``: load + preprocess, in a DataLoader worker).

The builder (embed_pipeline.py) asks a source for its studies once (``find``: headers only, or C-FIND / QIDO-RS) and
then for a Dataset over the ones still to do, whose items its DataLoader workers prepare in parallel. A PACS
study is prepared by retrieving it into the study cache (``iter_node_studies``), loading it with the ordinary
loader and preprocessing it, then dropping its pixels from the cache unless ``keep`` (a study that was in the
cache before the build came to it stays there). Its metadata records its ``node`` and ``study_uid``, so a
search hit knows where it lives (:func:`hlip_engine.pacs.hits.study_path_of_hit`). A study that cannot be
retrieved is skipped with the reason, and is tried again by ``--resume`` (a PACS that was down may be up).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metadata import normalise_date
from .reports import demographics

IDENTIFYING_FILTERS = ("patient_id", "patient_name", "accession")  # never printed nor recorded
RETRIES = 1  # a study the PACS fails to deliver is tried once more, on a new connection, before it is skipped
NOT_RETRIEVED = "not retrieved: "  # the skip reason of a study the PACS did not deliver (retried on --resume)


def study_key(ref) -> str:
    """What a resumed build recognises a study by: where it lives (folder or node) + its StudyInstanceUID."""
    return f"{ref.source}#{ref.uid}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def prepare_study(ref, recipe: str, options: dict) -> dict[str, Any]:
    """Load + preprocess one study (runs in a worker process). Never raises: a failure is a skip reason."""
    from hlip_engine.io import load_study
    from hlip_engine.preprocessing import preprocess

    meta = {"key": study_key(ref), "path": ref.source, "study_uid": ref.uid, "date": ref.date,
            "modality": ref.modality.split("/")[0], "description": ref.description}
    try:
        study = load_study(ref)
        prepared = preprocess(study, recipe, **options)
    except Exception as e:  # noqa: BLE001 - one bad study must not stop a million-study build
        kind = "" if isinstance(e, ValueError | OSError) else f"{type(e).__name__}: "
        return {"meta": meta, "tensor": None, "reason": kind + _one_line(e)}
    meta.update(study_uid=study.uid or ref.uid, description=study.description or ref.description,
                modality=(study.modality or meta["modality"]).split("/")[0], n_scans=len(study.scans),
                model_scans=int(prepared.tensor.shape[0]), skipped_parts=len(study.skipped),
                patient=study.patient)
    try:
        meta["date"] = normalise_date(study.date or ref.date)
    except ValueError:
        meta["date"], meta["date_raw"] = "", str(study.date)
    meta.update(demographics(study.patient, str(study.date or "")))
    if (study.report or {}).get("impression"):  # the study's own report (a DICOM SR); --reports overrides it
        meta["impression"] = study.report["impression"]
    return {"meta": meta, "tensor": prepared.tensor, "reason": ""}


class Library:
    """A torch Dataset over study references, so DataLoader workers load and preprocess in parallel."""

    def __init__(self, refs: list, recipe: str, options: dict):
        self.refs, self.recipe, self.options = refs, recipe, options

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return prepare_study(self.refs[i], self.recipe, self.options)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class NodeStudyRef:
    """A study on a PACS, as found (before it is retrieved): the find record and the node it is on."""

    uid: str
    source: str  # the node's address (hits.node_address), what the metadata records as ``node``
    date: str = ""
    modality: str = ""
    description: str = ""
    record: dict = field(default_factory=dict, compare=False, hash=False)


class FolderSource:
    """Every study under a library folder (``discover``: headers only)."""

    def __init__(self, library: str | Path):
        self.library = Path(library)
        self.label, self.where = str(library), "under"

    def find(self, progress: bool) -> list:
        from hlip_engine.io import discover

        refs = discover(self.library.resolve(), progress=progress)  # absolute paths: keys survive a cd
        if not refs:
            raise ValueError(f"{self.library}: no studies found (empty library?)")
        return refs

    def dataset(self, todo: list, recipe: str, options: dict):
        return Library(todo, recipe, options)

    def retry_skip(self, reason: str) -> bool:
        """Whether a study an earlier run skipped for ``reason`` is tried again by --resume: never for a folder."""
        return False

    def info(self) -> dict[str, Any]:
        return {"library": str(self.library.resolve())}


class NodeSource:
    """Every study on a PACS node matching the filters; see the module doc."""

    def __init__(self, node, *, filters: dict | None = None, keep: bool = False, cache=None,
                 limit: int | None = None):
        from hlip_engine.pacs import StudyCache, parse_node
        from hlip_engine.pacs.hits import node_address
        from hlip_engine.pacs.query import normalize_filters

        self.node = parse_node(node) if isinstance(node, str) else node
        self.filters = normalize_filters(**(filters or {}))  # PacsError now, not after the model has loaded
        self.keep, self.limit = bool(keep), limit
        self.cache = cache if isinstance(cache, StudyCache) else StudyCache(cache)
        self.address = node_address(self.node)
        self.label, self.where = str(self.node), "on"

    def find(self, progress: bool) -> list[NodeStudyRef]:
        from hlip_engine.pacs import connect

        with connect(self.node) as client:
            records = client.find_studies(limit=self.limit, **self.filters)
        if not records:
            said = ", ".join(f"{k} {v}" for k, v in self.shown_filters().items())
            raise ValueError(f"{self.node}: no studies found" + (f" matching {said}" if said else ""))
        return [NodeStudyRef(uid=r["study_uid"], source=self.address, date=r.get("date", ""),
                             modality=r.get("modality", ""), description=r.get("description", ""), record=r)
                for r in records]

    def dataset(self, todo: list[NodeStudyRef], recipe: str, options: dict):
        return NodeStudies(todo, recipe, options, self.node, self.cache.root, self.cache.max_bytes, self.keep)

    def retry_skip(self, reason: str) -> bool:
        """A study an earlier run could not retrieve is tried again (the PACS may be back); one it could not
        load or preprocess is not (the same files would fail the same way)."""
        return str(reason).startswith(NOT_RETRIEVED)

    def shown_filters(self) -> dict[str, str]:
        """The filters as they may be printed and recorded: a patient identifier only as "(given)"."""
        return {k: ("(given)" if k in IDENTIFYING_FILTERS else v) for k, v in self.filters.items()}

    def info(self) -> dict[str, Any]:
        return {"library": self.address, "pacs": {"node": self.address, "filters": self.shown_filters(),
                                                  "keep": self.keep, "cache": str(self.cache.root)}}


class NodeStudies:
    """The Dataset of a PACS build: item i is study i retrieved, loaded and preprocessed (as :class:`Library`).

    Each DataLoader worker process opens its own client (a DICOMweb session or DIMSE associations of its own),
    so ``--workers N`` retrieves N studies at once (one, for a node that retrieves by C-MOVE to our own port)."""

    def __init__(self, refs: list[NodeStudyRef], recipe: str, options: dict, node, cache_root: Path,
                 max_bytes: int, keep: bool):
        self.refs, self.recipe, self.options = refs, recipe, options
        self.node, self.cache_root, self.max_bytes, self.keep = node, cache_root, max_bytes, keep
        self._client, self._pid = None, None
        # C-MOVE sends the studies to our storage SCP on one port: one process can listen there at a time
        self.max_workers = 1 if getattr(node, "move_port", None) else None

    def __len__(self) -> int:
        return len(self.refs)

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_pid": None}  # a client never crosses a process

    def client(self):
        if self._client is None or self._pid != os.getpid():
            from hlip_engine.pacs import connect

            self._client, self._pid = connect(self.node), os.getpid()
        return self._client

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def __getitem__(self, i: int) -> dict[str, Any]:
        from hlip_engine.pacs import StudyCache, iter_node_studies

        ref = self.refs[i]
        cache = StudyCache(self.cache_root, self.max_bytes)
        # a study is "cached" (kept after indexing) only when it was whole in the cache before: a first try
        # that fails after its series arrived makes the next try find it whole, and it must still go
        was_cached = cache.complete(ref.uid)
        for _attempt in range(1 + RETRIES):
            try:
                item = next(iter_node_studies(self.client(), cache, records=[ref.record]))
            except Exception as e:  # noqa: BLE001 - one study the PACS fails on must not stop the build
                item = {"path": None, "error": f"{type(e).__name__}: {e}", "cached": False,
                        "drop": lambda: _remove(cache, ref.uid)}
            if not item["error"]:
                break
            # a fresh connection for the next try (a keep-alive socket the server dropped, a broken
            # association); the series that did arrive whole stay in the cache and are not fetched again
            self.close()
        item["cached"] = was_cached
        return prepare_node_study(ref, item, self.recipe, self.options, self.keep)


def _remove(cache, uid: str) -> None:
    """Drop a study from the cache, when ``uid`` is one (never another folder, nor the cache itself)."""
    from hlip_engine.pacs import PacsError
    from hlip_engine.pacs.query import check_uid

    try:
        check_uid(uid)
    except PacsError:
        return
    cache.remove(uid)


def prepare_node_study(ref: NodeStudyRef, item: dict, recipe: str, options: dict, keep: bool) -> dict[str, Any]:
    """A retrieved study (an ``iter_node_studies`` item) -> what ``build.prepare_study`` returns; never raises."""
    from hlip_engine.study import StudyRef

    key = study_key(ref)
    try:
        if item["error"]:
            meta = {"key": key, "path": key, "study_uid": ref.uid, "node": ref.source, "date": ref.date,
                    "modality": ref.modality.split("\\")[0], "description": ref.description}
            return {"meta": meta, "tensor": None, "reason": NOT_RETRIEVED + _one_line(ValueError(item["error"]))}
        local = StudyRef(uid=ref.uid, source=str(item["path"]), kind="dicom", description=ref.description,
                         date=ref.date, modality=ref.modality.split("\\")[0])
        out = prepare_study(local, recipe, options)
        out["meta"].update(key=key, node=ref.source)
        if out["tensor"] is None:
            out["meta"]["path"] = key  # a skipped study is reported by where it lives, not by a cache folder
        return out
    finally:
        if not keep and not item.get("cached"):
            try:
                item["drop"]()  # the pixels are in the prepared tensor now (or the study is skipped)
            except OSError:
                pass
