"""Retrieval, one function per question: the CLI (`hlip search`), the napari widget and the server call these.

    index = open_index("lib.index", model)          # refuses an index another model built
    hits = search(index, text_vector(model, "acute left MCA infarct"), k=20, filters={"modality": "MR"})
    hits = search(index, study_vector(index, model, study), k=20, exclude=[row])   # "more like this"
    hits[0].score, hits[0].row, hits[0].meta["path"]

    doc = search_document(index, model, text="acute left MCA infarct", k=20)    # the answer every front end
    doc = search_document(index, model, like=study, k=20)                       # gives: {query, index, size,
                                                                                 #  hits: [Hit.as_dict()]}

"More like this" is one rule everywhere (``like_query``): a study of the index (found by its path or its
StudyInstanceUID) is searched with its stored vector and never returned itself; any other study is
encoded as the index encoded its studies. So the CLI, the server and the plugin give the same hits.

A study is encoded for search the way the index encoded its studies: with the preprocessing recipe and
input grid the index recorded (``hlip index build --recipe`` may differ from the model's own), through
``encode_prepared``, the one encoding that ``hlip index build`` and ``hlip embed`` use too. Embeddings
of other weights are not comparable, so ``study_vector``/``open_index`` check the model's sha256
against the index's. Torch loads only when a vector is computed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FILTER_KEYS = ("modality", "date_from", "date_to")


@dataclass(frozen=True)
class Hit:
    """One study found: its row in the index, cosine score (higher is closer) and metadata."""

    row: int
    score: float
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` hit: score (4 decimals) + the metadata row."""
        return {"score": round(float(self.score), 4), **self.meta}


# --- which model --------------------------------------------------------------------------------------
def checkpoint_identity(checkpoint: str | Path) -> dict[str, Any]:
    """What an index records about the weights in ``checkpoint``: model_id (file name), model_hash (sha256)."""
    from hlip_engine.model.checkpoint import model_fingerprint

    path = Path(checkpoint)
    return {"model_id": path.name, "model_hash": model_fingerprint(path)}


def model_identity(model) -> dict[str, Any]:
    """The identity of a loaded model (dim, and its checkpoint's name and sha256 when it came from a file)."""
    source = str((model.config.get("source") or {}).get("path") or "")
    ident: dict[str, Any] = {"dim": int(model.embed_dim)}
    if source and Path(source).exists():
        ident.update(checkpoint_identity(source))
    return ident


def check_model(index, model) -> None:
    """Raise IndexFormatError unless ``model`` (its weights' sha256, its embedding size) built ``index``."""
    index.check_model(model_identity(model))


def open_index(path: str | Path, model=None, **options):
    """The published index at ``path``, checked against ``model`` when one is given."""
    from hlip_engine.index import StudyIndex

    return StudyIndex.open(path, expect_model=model_identity(model) if model is not None else None, **options)


def index_recipe(index, model) -> tuple[str, dict[str, Any]]:
    """(recipe, options) the index's studies were prepared with: the recorded ones, else the model's."""
    from hlip_engine.preprocessing import model_recipe

    recorded = dict(index.info.get("preprocess") or {})
    if recorded.get("recipe"):
        return recorded.pop("recipe"), recorded
    return model_recipe(model.config.get("preprocess"), index.identity.get("recipe") or None)


# --- vectors ------------------------------------------------------------------------------------------
def encode_prepared(model, tensors) -> np.ndarray:
    """Prepared studies (a list of [N_i, 1, D, H, W] arrays) -> their L2-normalised embeddings float32 [B, E]."""
    import torch

    with torch.inference_mode():
        return model.encode_image([torch.as_tensor(t) for t in tensors]).float().cpu().numpy()


def text_vector(model, text: str, *, centre: bool = True) -> np.ndarray:
    """A free-text query -> float32 [1, E] (``HLIPModel.encode_query``: the training report prefix, centred
    on typical queries unless ``centre=False``)."""
    import torch

    text = str(text or "").strip()
    if not text:
        raise ValueError("type what to look for, e.g. 'left frontal mass with surrounding oedema'")
    threads = torch.get_num_threads()
    if model.device.type == "cpu":
        # one short query gains nothing from more threads, and on a busy CPU OpenMP's spinning threads
        # turn 20 ms into a second (12 vs 45+ ms measured): encode it on one
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return model.encode_query([text], centre=centre).float().cpu().numpy()
    finally:
        torch.set_num_threads(threads)


def study_vector(index, model, study) -> np.ndarray:
    """A Study -> float32 [1, E], prepared with the index's recorded recipe, after checking the model."""
    from hlip_engine.preprocessing import preprocess

    check_model(index, model)
    recipe, options = index_recipe(index, model)
    return encode_prepared(model, [preprocess(study, recipe, **options).tensor])


def stored_row(index, study) -> int | None:
    """The index row of a study (a Study, a path or a StudyInstanceUID), or None when it is not indexed."""
    if isinstance(study, (str, Path)):
        text = str(study)
        for where in ({"path": text}, {"path": str(Path(text).resolve())}, {"study_uid": text}):
            row = index.find(**where)
            if row is not None:
                return row
        return None
    return index.find(study_uid=study.uid) if getattr(study, "uid", "") else None


# --- the lookup ---------------------------------------------------------------------------------------
def search(index, vector: np.ndarray, k: int = 10, filters: Mapping[str, Any] | None = None, *,
           exclude: Sequence[int] = ()) -> list[Hit]:
    """The ``k`` closest studies to ``vector`` ([E] or [1, E]), best first, as Hits.

    filters: ``modality`` (one or a list), ``date_from`` / ``date_to`` ('2024-03-01' or '20240301',
    inclusive). exclude: rows never returned (the query study itself in "more like this").
    """
    filters = dict(filters or {})
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown search filter(s) {sorted(unknown)}; known: {', '.join(FILTER_KEYS)}")
    if int(k) < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    scores, ids = index.search(vector, int(k), exclude=exclude, **filters)
    keep = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if int(i) >= 0]
    metas = index.metadata([i for _s, i in keep]) if keep else []
    return [Hit(i, s, dict(m)) for (s, i), m in zip(keep, metas) if m]


# --- the answer -------------------------------------------------------------------------------------------
def study_label(study, fallback: str = "") -> str:
    """How an answer names a study: its StudyInstanceUID, else ``fallback``, else where it was read from (a
    path or UID given as text is its own name)."""
    if isinstance(study, (str, Path)):
        return str(study)
    return str(getattr(study, "uid", "") or fallback or getattr(study, "source", "") or "")


def text_label(text: str) -> str:
    """How an answer names a free-text query."""
    return repr(str(text).strip())


@dataclass(frozen=True)
class LikeQuery:
    """"More like this", resolved against an index: the stored vector of a study of the index (None: the
    study is not in it, encode it with :func:`study_vector`), the rows never returned, the query's name."""

    vector: np.ndarray | None
    exclude: tuple[int, ...]
    label: str


def like_query(index, study, *, label: str = "") -> LikeQuery:
    """Resolve "more like ``study``" (a Study, a path or a StudyInstanceUID) without encoding anything: a study
    of the index gives its stored vector and its own row to exclude, named by its path and description; any
    other gives no vector, named by :func:`study_label` (``label``: its name when it has no UID)."""
    row = stored_row(index, study)
    if row is None:
        return LikeQuery(None, (), f"studies like {study_label(study, label)}")
    meta = index.metadata([row])[0] or {}
    name = meta.get("description") or meta.get("study_uid") or ""
    return LikeQuery(np.asarray(index.vectors([row]), dtype=np.float32), (int(row),),
                     f"studies like {meta.get('path', '')}" + (f" ({name})" if name else ""))


def hits_document(index, vector: np.ndarray, *, query: str, k: int = 10, filters: Mapping[str, Any] | None = None,
                  exclude: Sequence[int] = (), index_name: str | Path | None = None) -> dict[str, Any]:
    """The search answer for a query vector: ``{"query", "index", "size", "hits"}`` with the hits of
    :func:`search` as :meth:`Hit.as_dict` rows (``index_name``: how the index is named, default its folder)."""
    hits = search(index, vector, k, filters, exclude=exclude)
    name = index_name if index_name is not None else getattr(index, "root", "")
    return {"query": query, "index": str(name), "size": len(index), "hits": [h.as_dict() for h in hits]}


def search_document(index, model=None, *, text: str | None = None, like=None, k: int = 10,
                    filters: Mapping[str, Any] | None = None, plain: bool = False,
                    index_name: str | Path | None = None) -> dict[str, Any]:
    """The search answer (``hlip search --json``, ``POST /v1/search``, the napari Search widget) for free
    ``text`` or "more like" a study (``like``: a Study, or a path / StudyInstanceUID, read from disk when it
    is not in the index), by the rule of :func:`like_query`. ``model`` encodes the text or a study the index
    does not hold (the index's model: other weights are refused); ``plain``: plain cosine to the text."""
    if (text is None) == (like is None):
        raise ValueError("give either free text to search for, or a study to find others like (not both, "
                         "not neither)")
    if text is not None:
        if model is None:
            raise ValueError("a text query needs the index's model")
        return hits_document(index, text_vector(model, text, centre=not plain), query=text_label(text), k=k,
                             filters=filters, index_name=index_name)
    asked = like_query(index, like)
    if asked.vector is None and isinstance(like, (str, Path)):  # a folder or file: its UID may be indexed
        from hlip_engine.io import load_study

        path = str(like)
        like = load_study(path)
        asked = like_query(index, like, label=path)
    vector = asked.vector
    if vector is None:
        if model is None:
            raise ValueError("a study that is not in the index needs the index's model to encode it")
        vector = study_vector(index, model, like)
    return hits_document(index, vector, query=asked.label, k=k, filters=filters, exclude=asked.exclude,
                         index_name=index_name)
