"""The study library index: FAISS over study embeddings + SQLite metadata, built and searched by ``hlip``.

``StudyIndex`` (store.py) reads a published index; ``IndexBuild`` (version_writer.py) writes one and its
``commit()`` returns the ``StudyIndex``; ``build_library`` (embed_pipeline.py) fills one from a folder of
studies with a model, in parallel, resumably, and sharded under torchrun; ``build_node`` does the same
from a PACS (sources.py: retrieve, embed, drop), recording each study's node and StudyInstanceUID.
``LiveIndex`` (live.py) adds studies to a published index without a rebuild (``hlip index add``, ``hlip listen``),
one entry per StudyInstanceUID, and retrains its quantiser in the background once it has grown. Errors are types:
``IndexFormatError`` (corrupted, half-copied, other format), its ``ModelMismatchError`` (another model
or recipe) and ``BuildConflictError`` (studies already there: --resume or --rebuild).
"""
from __future__ import annotations

from .files import BuildConflictError, IndexFormatError, ModelMismatchError
from .store import StudyIndex
from .version_writer import IndexBuild

__all__ = ["BuildConflictError", "IndexBuild", "IndexFormatError", "ModelMismatchError", "StudyIndex"]
