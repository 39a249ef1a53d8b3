"""One engine interface for every widget: *this computer* (the engine in-process) or a *server*
(``hlip serve`` on a GPU box, URL + token; the token kept in the OS keyring).

    engine = current_engine()                      # from the saved choice (EngineSettings) + ModelSettings
    doc = engine.search("glioma", k=20)            # the `hlip search --json` document (+ size, seconds)
    doc = engine.search(study, k=20)               # more like this (a Study, never itself)
    doc = engine.zeroshot(study, prompts={...}, templates=[...], mode="softmax")   # doc["probabilities"]
    rel = engine.relevance(study, "glioma", templates=None, method=None)          # .volumes on each scan
    vec = engine.embed(study)                      # float32 [E]
    engine.relevance_methods(); engine.prompt_sets(); engine.describe()

Both engines answer with the same documents (the server's are the CLI's ``--json`` documents, and the local
one builds them with the same engine functions), so a widget parses one shape and shows the same numbers
either way. Errors from a server are :class:`hlip_engine.remote.EngineError` (``kind`` auth / too_large /
busy / down ..., ``reason``, ``advice``): let them reach the widget's Job, which shows them as napari
notifications. Nothing here imports torch or Qt at module import; ``ServerEngine`` never imports torch.
"""
from __future__ import annotations

import json
import threading
import time
import weakref
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from hlip_engine.remote import EngineError, RemoteEngine

from .settings import ModelSettings, config_dir

KINDS = ("local", "server")
LABELS = {"local": "this computer", "server": "server"}
KEYRING_SERVICE = "hlip-napari"

__all__ = ["EngineError", "EngineSettings", "LocalEngine", "ServerEngine", "current_engine", "forget_token",
           "load_token", "save_token"]


# --- the choice, remembered ----------------------------------------------------------------------------
@dataclass
class EngineSettings:
    """Where the engine runs: ``kind`` "local" or "server", and the server's URL (never the token)."""

    kind: str = "local"
    url: str = ""

    @staticmethod
    def path():
        return config_dir() / "engine.json"

    @classmethod
    def load(cls) -> EngineSettings:
        try:
            raw = json.loads(cls.path().read_text())
        except (OSError, ValueError):
            return cls()
        names = {f.name for f in fields(cls)}
        out = cls(**{k: str(v) for k, v in raw.items() if k in names}) if isinstance(raw, dict) else cls()
        if out.kind not in KINDS:
            out.kind = "local"
        return out

    def save(self) -> None:
        from hlip_engine.atomic import atomic_write_json

        atomic_write_json(self.path(), asdict(self), indent=1)


# --- the token, in the OS keyring -------------------------------------------------------------------------
def save_token(url: str, token: str) -> None:
    """Keep ``token`` for ``url`` in the OS keyring (Keychain, Windows Credential Locker, Secret Service)."""
    import keyring
    from keyring.errors import KeyringError

    try:
        keyring.set_password(KEYRING_SERVICE, _key(url), str(token).strip())
    except KeyringError as e:
        raise EngineError(f"the token cannot be stored: no usable OS keyring ({e})", kind="bad_request") from None


def load_token(url: str) -> str:
    """The token kept for ``url``; "" when there is none (or no keyring)."""
    import keyring
    from keyring.errors import KeyringError

    try:
        return keyring.get_password(KEYRING_SERVICE, _key(url)) or ""
    except KeyringError:
        return ""


def forget_token(url: str) -> None:
    import keyring
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        keyring.delete_password(KEYRING_SERVICE, _key(url))
    except (PasswordDeleteError, KeyringError):
        pass


def _key(url: str) -> str:
    return str(url).strip().rstrip("/")


# --- this computer ---------------------------------------------------------------------------------------
class LocalEngine:
    """The engine in this process: the plugin's loaded model and index (``_session.MODELS`` / ``INDEXES``)."""

    kind = "local"

    def __init__(self, settings: ModelSettings | None = None):
        from ._session import SETTINGS

        self.settings = settings if settings is not None else SETTINGS.settings
        self._embeddings: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"this computer ({self.settings.checkpoint or 'no model chosen'})"

    @property
    def model(self):
        from ._session import MODELS

        return MODELS.get(self.settings)

    def is_loaded(self) -> bool:
        from ._session import INDEXES, MODELS

        return MODELS.peek(self.settings) is not None and (not self.settings.index or
                                                           INDEXES.peek(self.settings.index) is not None)

    def info(self) -> dict[str, Any]:
        model = self.model
        return {"model": {"name": model.config.get("name"), "embedding_size": int(model.embed_dim),
                          "recipe": model.config.get("preprocess"), "device": str(model.device)},
                "prompt_sets": self.prompt_sets(), "relevance_methods": self.relevance_methods()}

    def prompt_sets(self) -> list[str]:
        from hlip_engine.zeroshot import prompt_set_names

        return prompt_set_names()

    def relevance_methods(self) -> dict[str, str]:
        from hlip_engine.relevance.methods import METHODS

        return dict(METHODS)

    def _index(self, index_path: str | None = None):
        from ._session import INDEXES

        return INDEXES.get(index_path or self.settings.index, self.model)

    def search(self, query, *, k: int = 10, index_path: str | None = None, modality=None, date_from=None,
               date_to=None, plain: bool = False) -> dict[str, Any]:
        from hlip_engine import search as retrieval

        model, index = self.model, self._index(index_path)
        t0 = time.perf_counter()
        exclude: list[int] = []
        if isinstance(query, str):
            vec, what = retrieval.text_vector(model, query, centre=not plain), repr(query.strip())
        else:  # "more like this": a Study, never returned itself
            vec = retrieval.study_vector(index, model, query)
            row = retrieval.stored_row(index, query)
            exclude = [row] if row is not None else []
            what = f"studies like {getattr(query, 'uid', '') or getattr(query, 'source', '')}"
        filters = {"modality": modality, "date_from": date_from, "date_to": date_to}
        hits = [h.as_dict() for h in retrieval.search(index, vec, k, filters, exclude=exclude)]
        return {"query": what, "index": str(index_path or self.settings.index), "hits": hits,
                "size": len(index), "seconds": time.perf_counter() - t0}

    def embed(self, study) -> np.ndarray:
        """As ``hlip embed`` / the server: the model's recipe, then ``encode_prepared``; once per study."""
        from hlip_engine.search import encode_prepared

        with self._lock:
            hit = self._embeddings.get(id(study))
            if hit is not None and hit[0]() is study and hit[1] is self.model:
                return hit[2]
        model = self.model
        vec = encode_prepared(model, [model.prepare(study).tensor])[0]
        with self._lock:
            self._embeddings[id(study)] = (weakref.ref(study), model, vec)
        return vec

    def zeroshot(self, study, *, prompts=None, prompt_set: str | None = None, templates=None, mode=None,
                 template_set: str | None = None) -> dict[str, Any]:
        import torch

        from hlip_engine.zeroshot import build_classifier

        model = self.model
        embedding = torch.from_numpy(np.asarray(self.embed(study)))
        with torch.inference_mode():
            clf = build_classifier(model, prompt_set=prompt_set, prompts=prompts, templates=templates or None,
                                   mode=mode, template_set=template_set)
            probs = clf.classify(embedding)
        return {"study": getattr(study, "uid", "") or str(getattr(study, "source", "")),
                "model": model.config.get("name"), "mode": clf.mode, "probabilities": probs}

    def relevance(self, study, prompt, *, templates=None, method: str | None = None, output: int = 0):
        from hlip_engine.relevance import relevance

        model = self.model
        return relevance(model, model.prepare(study), prompt, templates=templates or None, method=method,
                         output=output)


# --- a server ---------------------------------------------------------------------------------------------
class ServerEngine:
    """``hlip serve`` at ``url``: the same questions, over HTTP; no torch needed on this computer."""

    kind = "server"

    def __init__(self, url: str, token: str | None = None, **options):
        self.client = RemoteEngine(url, token if token is not None else load_token(url), **options)
        if not self.client.token:
            raise EngineError(f"no token for {self.client.url}: enter the server's token in the Model box",
                              kind="auth")
        self._info: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return self.client.url

    def describe(self) -> str:
        return f"server {self.client.url}"

    def is_loaded(self) -> bool:
        return True  # the server holds the model: nothing to load here

    def info(self) -> dict[str, Any]:
        self._info = self.client.info()
        return self._info

    def _cached_info(self) -> dict[str, Any]:
        return self._info if self._info is not None else self.info()

    def prompt_sets(self) -> list[str]:
        return list(self._cached_info().get("prompt_sets") or [])

    def relevance_methods(self) -> dict[str, str]:
        return dict(self._cached_info().get("relevance_methods") or {})

    def search(self, query, *, k: int = 10, index_path: str | None = None, modality=None, date_from=None,
               date_to=None, plain: bool = False) -> dict[str, Any]:
        """index_path is ignored: a server searches its own index."""
        t0 = time.perf_counter()
        filters = {"modality": modality, "date_from": date_from, "date_to": date_to}
        if isinstance(query, str):
            doc = self.client.search(query, k=k, plain=plain, **filters)
        else:
            doc = self.client.search(study=query, k=k, **filters)
        doc["seconds"] = time.perf_counter() - t0
        doc.setdefault("size", (self._cached_info().get("index") or {}).get("size"))
        return doc

    def embed(self, study) -> np.ndarray:
        return self.client.embed(study)

    def zeroshot(self, study, *, prompts=None, prompt_set: str | None = None, templates=None, mode=None,
                 template_set: str | None = None) -> dict[str, Any]:
        return self.client.zeroshot(study, prompts=prompts, prompt_set=prompt_set, templates=templates or None,
                                    mode=mode, template_set=template_set)

    def relevance(self, study, prompt, *, templates=None, method: str | None = None, output: int = 0):
        return self.client.relevance(study, prompt, templates=templates or None, method=method, output=output)


def current_engine(model_settings: ModelSettings | None = None, engine_settings: EngineSettings | None = None):
    """The engine the user chose: a LocalEngine, or a ServerEngine with the keyring's token."""
    chosen = engine_settings if engine_settings is not None else EngineSettings.load()
    if chosen.kind == "server":
        if not chosen.url:
            raise EngineError("no server address: enter the URL of `hlip serve` in the Model box", kind="bad_request")
        return ServerEngine(chosen.url)
    return LocalEngine(model_settings)
