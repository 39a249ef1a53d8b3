"""Shared test set-up: offline Hugging Face, few threads (CI has 2 cores), deterministic torch."""
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# napari's own settings (reader preferences among them) in a temporary file, never the user's
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-settings-"), "settings.yaml"))


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """$HLIP_SCREENSHOTS when set (CI keeps them), else a pytest temporary folder."""
    env = os.environ.get("HLIP_SCREENSHOTS")
    path = Path(env) if env else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
