"""Relevance maps: where in a whole study the model sees a prompt (official HLIP method, O(tokens) memory).

Files, smallest first: ``last_block.py`` (the exact grad x attention of the last block's CLS row),
``rollout.py`` (Chefer's grad x attention over every block), ``hierarchy.py`` (CLS attention per block at
slice/scan/study level), ``maps.py`` (the ``Relevance``
result: token maps, scan importance, slice profiles, maps on each scan's voxels), ``export.py`` (NIfTI,
PNG montage, JSON), ``api.py`` (``relevance(model, inputs, prompt, method=...)``). This package is the public entry point:
``from hlip_engine.relevance import relevance, Relevance``.
"""
from .export import export, save_montage, save_nifti
from .maps import HierarchyView, Relevance, hot_spot, token_centres
from .methods import DEFAULT_METHOD, METHODS, check_method, default_method


def __getattr__(name):  # the computation needs torch; the result types and the method names do not
    if name in ("relevance", "prompt_embedding"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DEFAULT_METHOD", "METHODS", "HierarchyView", "Relevance", "check_method", "default_method", "export",
           "hot_spot", "prompt_embedding", "relevance", "save_montage", "save_nifti", "token_centres"]
