"""What the plugin keeps loaded between clicks: the model and the study index (no Qt here).

Also where the model settings and the engine choice (this computer or a server) are shared between the
widgets' Model boxes (:data:`SETTINGS`, :data:`ENGINE`).

Loading a checkpoint or a 100,000-study index takes seconds; a search must answer in milliseconds.
So both are loaded once (in a worker thread) and kept until their settings change. One store per
process: every widget and every viewer share the same loaded model.
"""
from __future__ import annotations

import threading
import weakref
from pathlib import Path

from psygnal import Signal

from .settings import EngineSettings, ModelSettings


def _update(hub, values: dict) -> None:
    """Set ``values`` on the hub's settings; save and tell the widgets, only when something changed."""
    current = hub.settings
    if all(getattr(current, k) == v for k, v in values.items()):
        return
    for k, v in values.items():
        setattr(current, k, v)
    current.save()
    hub.changed.emit(current)


class SettingsHub:
    """The current model settings, shared by every widget's model panel and saved on each change."""

    changed = Signal(object)  # ModelSettings

    def __init__(self) -> None:
        self._settings: ModelSettings | None = None

    @property
    def settings(self) -> ModelSettings:
        if self._settings is None:
            self._settings = ModelSettings.load()
        return self._settings

    def update(self, **values) -> None:
        _update(self, values)

    def reload(self) -> None:
        """Forget the in-memory copy (tests point the config folder elsewhere)."""
        self._settings = None
        self.changed.emit(self.settings)


class EngineHub:
    """Where the engine runs (:class:`hlip_napari.settings.EngineSettings`), shared by every Model box.

    Read from its file each time (a few bytes), so it never goes stale when tests move the config folder;
    ``changed`` tells the other boxes (and the search widget's index row) when one box edits it."""

    changed = Signal(object)  # EngineSettings

    @property
    def settings(self):
        return EngineSettings.load()

    def update(self, **values) -> None:
        _update(self, values)

    def notify(self) -> None:
        """Tell the boxes something not in the settings changed (a token saved for the URL)."""
        self.changed.emit(self.settings)


class ModelStore:
    """The loaded model, keyed by (checkpoint, text model, device); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._model = None
        self._embeddings: dict[int, tuple] = {}  # id(study) -> (weakref to study, model, embedding [E])

    def peek(self, settings: ModelSettings):
        return self._model if self._key == settings.key() else None

    def get(self, settings: ModelSettings):
        """The model for ``settings``, loading it (slow, call from a worker) when not loaded yet."""
        if not settings.checkpoint:
            raise FileNotFoundError("no model checkpoint chosen: pick one in the Model section of the widget")
        if not Path(settings.checkpoint).exists():
            raise FileNotFoundError(f"model checkpoint not found: {settings.checkpoint}")
        with self._lock:
            if self._key != settings.key():
                from hlip_engine import load_model

                device = None if settings.device == "auto" else settings.device
                self._model = None  # free the old one first: two ViTs may not fit
                self._embeddings.clear()
                self._model = load_model(settings.checkpoint, text_model=settings.text_model or None, device=device)
                self._key = settings.key()
            return self._model

    def study_embedding(self, settings: ModelSettings, study):
        """The loaded model's embedding (float32 numpy [E]) of ``study``, computed once per study and model
        (zero-shot reruns are instant): the model's recipe, then ``encode_prepared``, as ``hlip embed`` and
        ``hlip serve`` compute it."""
        model = self.get(settings)
        hit = self._embeddings.get(id(study))
        if hit is not None and hit[0]() is study and hit[1] is model:
            return hit[2]
        from hlip_engine.search import encode_prepared

        emb = encode_prepared(model, [model.prepare(study).tensor])[0]
        with self._lock:
            if self._model is model:  # not a model replaced meanwhile
                self._embeddings[id(study)] = (weakref.ref(study), model, emb)
        return emb

    def clear(self) -> None:
        with self._lock:
            self._key, self._model = None, None
            self._embeddings.clear()


class IndexStore:
    """The opened study index, keyed by its folder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._index = None

    def peek(self, path: str):
        return self._index if path and self._path == str(path) else None

    def get(self, path: str, model=None):
        """The index in ``path``, opened once; refused (ModelMismatchError) when ``model`` did not build it."""
        if not path:
            raise FileNotFoundError("no study index chosen: pick an index folder (built with `hlip index build`)")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"study index folder not found: {path}")
        from hlip_engine.search import model_identity

        expect = model_identity(model) if model is not None else None
        with self._lock:
            if self._path != str(path):
                from hlip_engine.index import StudyIndex

                self._index, self._path = None, None
                self._index = StudyIndex.open(path, expect_model=expect)
                self._path = str(path)
            elif expect is not None:  # opened for an earlier model: the weights' sha256 is remembered
                self._index.check_model(expect)
            return self._index

    def clear(self) -> None:
        with self._lock:
            self._path, self._index = None, None


SETTINGS = SettingsHub()
ENGINE = EngineHub()
MODELS = ModelStore()
INDEXES = IndexStore()
