"""Shared test set-up: offline Hugging Face, few threads (CI has 2 cores), deterministic torch."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# napari's own settings (reader preferences among them) in a temporary file, never the user's
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-settings-"), "settings.yaml"))
