"""The study library index: FAISS over study embeddings + SQLite metadata, built and searched by ``hlip``.

``StudyIndex`` is the stable API (store.py); ``build_library`` (build.py) fills one from a folder of
studies with a model, in parallel, resumably, and sharded under torchrun.
"""
from __future__ import annotations

from .files import IndexFormatError
from .store import StudyIndex

__all__ = ["IndexFormatError", "StudyIndex"]
