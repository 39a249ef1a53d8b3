"""napari test set-up: settings and caches in temporary folders, screenshots kept for people to look at."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Never read or write the user's real settings; forget loaded models between tests."""
    monkeypatch.setenv("HLIP_NAPARI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HLIP_NAPARI_CACHE_DIR", str(tmp_path / "cache"))
    from hlip_napari._session import INDEXES, MODELS, SETTINGS

    SETTINGS.reload()
    yield
    MODELS.clear()
    INDEXES.clear()
    SETTINGS.reload()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny HLIP model (random visual tower, MiniLM text tower, 512-d embeddings) saved in our format."""
    import torch

    from hlip_engine import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "hlip_tiny.safetensors"
    create_model("hlip_tiny", embed_dim=512).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from hlip_engine import load_model

    return load_model(tiny_checkpoint, device="cpu")
