"""Relevance maps: where in a whole study the model sees a prompt (official HLIP method, O(tokens) memory).

Files, smallest first: ``last_block.py`` (the exact grad x attention of the last block's CLS row),
``hierarchy.py`` (CLS attention per block at slice/scan/study level), ``maps.py`` (the ``Relevance``
result: token maps, scan importance, slice profiles, maps on each scan's voxels), ``export.py`` (NIfTI,
PNG montage, JSON), ``api.py`` (``relevance(model, inputs, prompt)``). ``hlip_engine.attention`` is
the public entry point.
"""
from .api import prompt_embedding, relevance
from .export import export, save_montage, save_nifti
from .maps import HierarchyView, Relevance

__all__ = ["HierarchyView", "Relevance", "export", "prompt_embedding", "relevance", "save_montage", "save_nifti"]
