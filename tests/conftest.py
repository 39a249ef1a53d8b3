"""Shared test set-up: offline Hugging Face, few threads (CI has 2 cores), deterministic torch."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# napari's own settings (reader preferences among them) in a temporary file, never the user's
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-settings-"), "settings.yaml"))
# the plugin's start-up gc.freeze() (hlip_napari/_warmup.py) would make one test's live objects permanent for
# every later test in this process; tests/napari/test_napari_warmup.py turns it on where it is tested
os.environ.setdefault("HLIP_NAPARI_GC_FREEZE", "0")
