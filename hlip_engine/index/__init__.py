"""The study library index: FAISS over study embeddings + SQLite metadata, built and searched by ``hlip``.

``StudyIndex`` (store.py) reads a published index; ``IndexBuild`` (index_build.py) writes one and its
``commit()`` returns the ``StudyIndex``; ``build_library`` (build.py) fills one from a folder of
studies with a model, in parallel, resumably, and sharded under torchrun; ``build_node`` does the same
from a PACS (sources.py: retrieve, embed, drop), recording each study's node and StudyInstanceUID. Errors are types:
``IndexFormatError`` (corrupted, half-copied, other format), its ``ModelMismatchError`` (another model
or recipe) and ``BuildConflictError`` (studies already there: --resume or --rebuild).
"""
from __future__ import annotations

from .files import BuildConflictError, IndexFormatError, ModelMismatchError
from .index_build import IndexBuild
from .store import StudyIndex

__all__ = ["BuildConflictError", "IndexBuild", "IndexFormatError", "ModelMismatchError", "StudyIndex"]
