"""Model settings remembered across napari restarts: a small JSON file in the user's config folder.

Why JSON and not QSettings: the same file is readable without Qt (launch scripts, tests) and easy to
inspect. ``HLIP_NAPARI_CONFIG_DIR`` moves it (tests point it at a temporary folder).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hlip_engine.pacs.nodes import config_dir  # one config folder for the plugin and the engine's PACS nodes

DEVICES = ("auto", "cpu", "cuda")


def settings_path() -> Path:
    return config_dir() / "settings.json"


@dataclass
class ModelSettings:
    """What the model widgets need to load a model, plus the last index folder used for search."""

    checkpoint: str = ""  # our .safetensors, an official .pt, or an official Hugging Face folder
    text_model: str = ""  # tokenizer/text tower folder; "" = the one the checkpoint names
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    index: str = ""  # last study index folder opened in the search widget

    def key(self) -> tuple[str, str, str]:
        """What identifies a loaded model: changing any of these means loading again."""
        return (self.checkpoint, self.text_model, self.device)

    @classmethod
    def load(cls) -> ModelSettings:
        """The saved settings; defaults when the file is missing or unreadable (never raises)."""
        try:
            raw = json.loads(settings_path().read_text())
        except (OSError, ValueError):
            return cls()
        names = {f.name for f in fields(cls)}
        values = {k: str(v) for k, v in raw.items() if k in names and v is not None} if isinstance(raw, dict) else {}
        out = cls(**values)
        if out.device not in DEVICES:
            out.device = "auto"
        return out

    def save(self) -> None:
        """Write atomically so a crash never leaves half a file."""
        from hlip_engine.atomic import atomic_write_json

        atomic_write_json(settings_path(), asdict(self), indent=1)


KINDS = ("local", "server")


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
