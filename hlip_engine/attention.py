"""Public entry point for relevance maps: ``from hlip_engine.attention import relevance, Relevance``.

The implementation lives in :mod:`hlip_engine.relevance` (one small file per step); this module keeps
the name the architecture and the plugin use.
"""
from .relevance import HierarchyView, Relevance, export, prompt_embedding, relevance, save_montage, save_nifti

__all__ = ["HierarchyView", "Relevance", "export", "prompt_embedding", "relevance", "save_montage", "save_nifti"]
