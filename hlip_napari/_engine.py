"""One engine interface for every widget: *this computer* (the engine in-process) or a *server*
(``hlip serve`` on a GPU box, URL + token; the token kept in the OS keyring).

    engine = current_engine()                      # from the saved choice (EngineSettings) + ModelSettings
    doc = engine.search("glioma", k=20)            # the `hlip search --json` document (+ size, seconds)
    doc = engine.search(study, k=20)               # more like this (a Study, never itself)
    doc = engine.zeroshot(study, prompts={...}, templates=[...], mode="softmax")   # doc["probabilities"]
    rel = engine.relevance(study, "glioma", templates=None, method=None)          # .volumes on each scan
    vec = engine.embed(study)                      # float32 [E]
    engine.relevance_methods(); engine.prompt_sets(); engine.describe()
    yield from engine.warm_up(index_path)          # a worker's progress: loading the model / the index
    engine.model_config()                          # what picks the model's default prompt set
    path = engine.open_hit(hit)                    # a search hit's study on this computer (a server's: downloaded)

Both engines answer with the same documents (the server's are the CLI's ``--json`` documents, and the local
one builds them with the same engine functions), so a widget parses one shape and shows the same numbers
either way. Errors from a server are :class:`hlip_engine.remote.EngineError` (``kind`` auth / too_large /
busy / down ..., ``reason``, ``advice``): let them reach the widget's Job, which shows them as napari
notifications. Nothing here imports torch or Qt at module import; ``ServerEngine`` never imports torch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hlip_engine.remote import EngineError, RemoteEngine

from .settings import KINDS, EngineSettings, ModelSettings  # noqa: F401 - KINDS: the widgets name the engine kinds from here

LABELS = {"local": "this computer", "server": "server"}
KEYRING_SERVICE = "hlip-napari"

__all__ = ["EngineError", "EngineSettings", "LocalEngine", "ServerEngine", "cache_dir", "current_engine",
           "forget_token", "load_token", "ready", "save_token"]


# --- the token, in the OS keyring -------------------------------------------------------------------------
_SESSION_TOKENS: dict[str, str] = {}  # where no OS keyring works: this process only, never a file


def save_token(url: str, token: str) -> bool:
    """Keep ``token`` for ``url`` in the OS keyring (Keychain, Windows Credential Locker, Secret Service).

    Returns True when the keyring took it; False where there is no usable keyring: then the token is kept
    in this process's memory only (until napari closes), never written to a file."""
    import keyring
    from keyring.errors import KeyringError

    token = str(token).strip()
    try:
        keyring.set_password(KEYRING_SERVICE, _key(url), token)
    except KeyringError:
        _SESSION_TOKENS[_key(url)] = token
        return False
    _SESSION_TOKENS.pop(_key(url), None)
    return True


def load_token(url: str) -> str:
    """The token kept for ``url``; "" when there is none (or no keyring)."""
    import keyring
    from keyring.errors import KeyringError

    try:
        saved = keyring.get_password(KEYRING_SERVICE, _key(url)) or ""
    except KeyringError:
        saved = ""
    return saved or _SESSION_TOKENS.get(_key(url), "")


def forget_token(url: str) -> None:
    import keyring
    from keyring.errors import KeyringError, PasswordDeleteError

    _SESSION_TOKENS.pop(_key(url), None)
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

    def describe(self) -> str:
        return f"this computer ({self.settings.checkpoint or 'no model chosen'})"

    @property
    def model(self):
        from ._session import MODELS

        return MODELS.get(self.settings)

    def is_loaded(self, index_path: str | None = None) -> bool:
        """The model (and the index at ``index_path``, else the settings' one) already loaded: no waiting."""
        from ._session import INDEXES, MODELS

        index = index_path if index_path is not None else self.settings.index
        return MODELS.peek(self.settings) is not None and (not index or INDEXES.peek(index) is not None)

    def warm_up(self, index_path: str | None = None, *, index: bool = False):
        """A worker's first steps: load the model (and open the index), yielding what it does."""
        from ._session import INDEXES, MODELS

        yield "loading the model" if MODELS.peek(self.settings) is None else "model ready"
        model = self.model
        if index:
            path = index_path or self.settings.index
            yield "opening the index" if INDEXES.peek(path) is None else "index ready"
            INDEXES.get(path, model)

    def model_config(self) -> dict[str, Any]:
        return self.model.config

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
        """The engine's search document (as ``hlip search --json`` and the server give it), for free text or
        "more like" a study, plus the seconds it took here."""
        from hlip_engine.search import search_document

        t0 = time.perf_counter()
        filters = {"modality": modality, "date_from": date_from, "date_to": date_to}
        asked = {"text": query} if isinstance(query, str) else {"like": query}
        doc = search_document(self._index(index_path), self.model, k=k, filters=filters, plain=plain,
                              index_name=str(index_path or self.settings.index), **asked)
        doc["seconds"] = time.perf_counter() - t0
        return doc

    def embed(self, study) -> np.ndarray:
        """As ``hlip embed`` / the server: the model's recipe, then ``encode_prepared``; once per study and
        model (kept by ``_session.MODELS``, so every widget's zero-shot rerun is instant)."""
        from ._session import MODELS

        return MODELS.study_embedding(self.settings, study)

    def zeroshot(self, study, *, prompts=None, prompt_set: str | None = None, templates=None, mode=None,
                 template_set: str | None = None) -> dict[str, Any]:
        """The engine's zero-shot document (as ``hlip zeroshot --json`` and the server give it); with no
        prompts and no prompt set, the model's default set."""
        import torch

        from hlip_engine.zeroshot import zeroshot_document

        embedding = np.asarray(self.embed(study))
        with torch.inference_mode():
            return zeroshot_document(self.model, study, embedding, prompt_set=prompt_set, prompts=prompts,
                                     templates=templates or None, mode=mode, template_set=template_set)

    def relevance(self, study, prompt, *, templates=None, method: str | None = None, output: int = 0):
        from hlip_engine.relevance import relevance

        model = self.model
        return relevance(model, model.prepare(study), prompt, templates=templates or None, method=method,
                         output=output)

    def open_hit(self, hit) -> Path:
        """Where a search hit's study is on this computer: its recorded path, or for a hit of a PACS-built
        index (``node`` + ``study_uid``) the study retrieved again from its node when its folder is gone."""
        hit = _hit_dict(hit)
        if hit.get("node") and hit.get("study_uid"):
            from hlip_engine.pacs.hits import study_path_of_hit

            return Path(study_path_of_hit(hit))
        path = str(hit.get("path") or hit.get("source") or "")
        if not path:
            raise EngineError("this search hit records no study path; rebuild the index with `hlip index build`",
                              kind="bad_request")
        return Path(path)


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

    def is_loaded(self, index_path: str | None = None) -> bool:
        return True  # the server holds the model and the index: nothing to load here

    def warm_up(self, index_path: str | None = None, *, index: bool = False):
        """Nothing to load here: one progress step that says who answers."""
        yield f"asking {self.client.url}"

    def model_config(self) -> dict[str, Any]:
        """The served model's config as far as the plugin needs it (its default zero-shot prompt set)."""
        return server_model_config(self._cached_info())

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

    def study_folder(self, study_uid: str) -> Path:
        """Where a study downloaded from a server is kept: the plugin's cache folder, by StudyInstanceUID."""
        return cache_dir() / "server-studies" / str(study_uid)

    def open_hit(self, hit) -> Path:
        """A search hit of the server's index, on this computer: its study downloaded from the server (its
        ``path`` is a folder on the server) into the plugin's cache folder, by StudyInstanceUID; a study
        downloaded before is reused. The download is atomic: an interrupted one leaves no folder."""
        hit = _hit_dict(hit)
        uid = str(hit.get("study_uid") or "").strip()
        if not uid:
            raise EngineError("this search hit records no StudyInstanceUID to ask the server for",
                              kind="bad_request")
        folder = self.study_folder(uid)
        if folder.parent != self.study_folder("x").parent or uid in (".", ".."):  # a UID that is a path
            raise EngineError(f"not a StudyInstanceUID: {uid!r}", kind="bad_request")
        _touch(folder)  # opened now: the last to be evicted (a reused download changes no size)
        if not folder.is_dir():
            try:
                self.client.download_study(uid, folder)
            except FileExistsError:
                pass  # another worker downloaded it meanwhile
            except OSError:
                if not folder.is_dir():  # else the same, caught at the rename
                    raise
            evict_downloads(folder.parent, download_cache_bytes(), keep=folder)
        return folder


def download_cache_bytes() -> int:
    """How much the studies downloaded from servers may take: ``HLIP_NAPARI_DOWNLOAD_CACHE_GB`` (default 20)."""
    import os

    try:
        gb = float(os.environ.get("HLIP_NAPARI_DOWNLOAD_CACHE_GB", "20"))
    except ValueError:
        gb = 20.0
    return int(gb * 2**30)


def _touch(folder: Path) -> None:
    import os

    try:
        os.utime(folder)
    except OSError:  # not downloaded yet: a new folder's time is now anyway
        pass


def evict_downloads(root: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove downloaded studies, least recently opened first (folder times), until the rest fit in
    ``max_bytes``; ``keep`` (the study being opened) and downloads in progress (hidden folders) stay."""
    import shutil

    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in folders}
    total, gone = sum(sizes.values()), []
    for p in sorted(folders, key=lambda q: q.stat().st_mtime):
        if total <= max_bytes:
            break
        if keep is not None and p == keep:
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= sizes[p]
        gone.append(p)
    return gone


def cache_dir() -> Path:
    """The plugin's cache folder: ``HLIP_NAPARI_CACHE_DIR``, else the user's cache folder for hlip-napari."""
    import os

    env = os.environ.get("HLIP_NAPARI_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("hlip-napari"))


def _hit_dict(hit) -> dict[str, Any]:
    """A hit as a dict: a row of the ``hlip search --json`` document, a ``search.Hit``, or a path."""
    if isinstance(hit, (str, Path)):
        return {"path": str(hit)}
    if not isinstance(hit, dict) and hasattr(hit, "meta"):
        return dict(hit.meta)
    return dict(hit)


def server_model_config(info: dict[str, Any]) -> dict[str, Any]:
    """{name, preprocess, zeroshot} of the served model, from ``/v1/info``, without torch.

    The zeroshot block (the model's default prompt set) is the server's when it sends one, else the one of
    the registered config of the same name, read from its JSON file (``hlip_engine.model.factory`` imports
    torch). Without a block, "name" is left out, so that nothing looks the architecture up with torch."""
    model = dict(info.get("model") or {})
    name = model.get("name")
    block = model.get("zeroshot") or _registered_zeroshot(name)
    out: dict[str, Any] = {"preprocess": model.get("recipe")}
    if block:
        out.update(name=name, zeroshot=block)
    return out


def _registered_zeroshot(name) -> dict[str, Any]:
    import hlip_engine

    if not name or not str(name).replace("_", "").replace("-", "").isalnum():
        return {}
    path = Path(hlip_engine.__file__).parent / "model" / "configs" / f"{name}.json"
    try:
        return dict(json.loads(path.read_text()).get("zeroshot") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def ready(model_settings: ModelSettings | None = None, engine_settings: EngineSettings | None = None,
          index_path: str | None = None) -> bool:
    """Whether a job would start answering at once (nothing to load); cheap, for the Qt thread (no keyring,
    no network): a server is always ready, this computer when the model (and index) are loaded."""
    chosen = engine_settings if engine_settings is not None else EngineSettings.load()
    if chosen.kind == "server":
        return True
    return LocalEngine(model_settings).is_loaded(index_path)


def current_engine(model_settings: ModelSettings | None = None, engine_settings: EngineSettings | None = None):
    """The engine the user chose: a LocalEngine, or a ServerEngine with the keyring's token."""
    chosen = engine_settings if engine_settings is not None else EngineSettings.load()
    if chosen.kind == "server":
        if not chosen.url:
            raise EngineError("no server address: enter the URL of `hlip serve` in the Model box", kind="bad_request")
        return ServerEngine(chosen.url)
    return LocalEngine(model_settings)
