"""HLIP engine: studies, preprocessing, the hierarchical ViT + text tower, zero-shot, relevance, index.

Imports are lazy so that ``import hlip_engine`` (and the napari plugin's start-up) stays cheap:
torch, pydicom and faiss load only when the function that needs them is first used.
"""
from __future__ import annotations

import importlib

from .study import PatientInfo, Scan, Study, StudyLoadError, StudyRef

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_study": "hlip_engine.io",
    "discover": "hlip_engine.io",
    "preprocess": "hlip_engine.preprocessing",
    "PreparedStudy": "hlip_engine.preprocessing",
    "RECIPES": "hlip_engine.preprocessing",
    "recipe_for": "hlip_engine.preprocessing",
    "load_model": "hlip_engine.model",
    "create_model": "hlip_engine.model",
    "StudyIndex": "hlip_engine.index",
    "IndexBuild": "hlip_engine.index",
}

__all__ = ["PatientInfo", "Scan", "Study", "StudyLoadError", "StudyRef", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hlip_engine' has no attribute {name!r}")
