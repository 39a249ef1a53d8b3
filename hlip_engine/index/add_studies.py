"""Adding studies to a live index with a model: what ``hlip index add`` and the DICOM listener share.

``IndexWriter`` holds the model and the :class:`~hlip_engine.index.live.LiveIndex` and turns a loaded or
prepared study into an embedding added to the index (searchable on return, one entry per study).
``add_library`` adds every study under a folder with it: a study already indexed and unchanged is not
added twice, a changed one is replaced.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .live import Added, LiveIndex
from .sources import FolderSource, _one_line, prepare_study


def model_identity(model, checkpoint: Path, recipe: str, keep_identifiers: bool = False) -> dict[str, Any]:
    """What an index records of the model its embeddings come from (as ``hlip index build`` does)."""
    from ..model.checkpoint import model_fingerprint

    return dict(dim=int(model.embed_dim), model_id=Path(checkpoint).name, model_hash=model_fingerprint(checkpoint),
                architecture=str(model.config.get("name", "")), recipe=recipe, keep_identifiers=keep_identifiers)


class IndexWriter:
    """A model + the live index it adds to; ``close`` releases the index's build lock."""

    def __init__(self, checkpoint: str | Path, index_dir: str | Path, *, recipe: str | None = None,
                 device: str | None = None, keep_identifiers: bool = False, index_type: str | None = None,
                 background: bool = True, model=None, log=None):
        from ..model import load_model
        from ..preprocessing import model_recipe

        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"{checkpoint}: no such model checkpoint")
        self.model = model if model is not None else load_model(self.checkpoint, device=device)
        self.recipe, self.options = model_recipe(self.model.config.get("preprocess"), recipe)
        ident = model_identity(self.model, self.checkpoint, self.recipe, keep_identifiers)
        self.live = LiveIndex.open(index_dir, **ident, index_type=index_type, background=background, log=log,
                                   extra_info={"checkpoint": str(self.checkpoint.resolve()),
                                               "preprocess": {"recipe": self.recipe, **self.options}})

    def embed(self, prepared: list) -> np.ndarray:
        from ..search import encode_prepared

        return encode_prepared(self.model, prepared)

    def add_prepared(self, items: list[dict[str, Any]]) -> list[tuple[dict, Added | None, str]]:
        """``prepare_study`` results -> [(meta, Added or None, skip reason)]; one that fails is skipped."""
        ok = [it for it in items if it["tensor"] is not None]
        out = [(it["meta"], None, it["reason"]) for it in items if it["tensor"] is None]
        if ok:
            try:
                vecs = self.embed([it["tensor"] for it in ok])
            except Exception as e:  # noqa: BLE001 - retried one at a time, each failure a reason
                if len(ok) == 1:
                    return out + [(ok[0]["meta"], None, f"encoding failed: {type(e).__name__}: {_one_line(e)}")]
                return out + [r for it in ok for r in self.add_prepared([it])]
            added = self.live.add(vecs, [it["meta"] for it in ok])
            out += [(it["meta"], a, "") for it, a in zip(ok, added)]
        return out

    def close(self) -> None:
        self.live.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class AddReport:
    library: str
    index: str
    found: int = 0
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.found} studies found under {self.library}: {self.added} added, {self.replaced} replaced "
               f"(changed), {self.unchanged} already indexed, {len(self.skipped)} skipped in {self.seconds:.1f} s"]
        out += [f"  skipped {path}: {reason}" for path, reason in self.skipped[:50]]
        out.append(f"{self.index}: {self.total} studies searchable")
        return out


def add_library(library: str | Path, checkpoint: str | Path, index_dir: str | Path, *, recipe: str | None = None,
                batch_size: int = 4, device: str | None = None, keep_identifiers: bool = False,
                progress: bool = False, log=None) -> AddReport:
    """Add every study under ``library`` to the index at ``index_dir`` (created when absent) without a
    rebuild; each batch is searchable as soon as it is added. A study that cannot be loaded is skipped and
    recorded with its reason."""
    t0 = time.time()
    report = AddReport(str(library), str(index_dir))
    refs = FolderSource(library).find(progress)
    report.found = len(refs)
    with IndexWriter(checkpoint, index_dir, recipe=recipe, device=device, keep_identifiers=keep_identifiers,
                     background=False, log=log) as writer:
        for start in range(0, len(refs), max(1, batch_size)):
            items = [prepare_study(ref, writer.recipe, writer.options) for ref in refs[start:start + batch_size]]
            for meta, added, reason in writer.add_prepared(items):
                if added is None:
                    writer.live.skip(meta["key"], meta["path"], reason)
                    report.skipped.append((meta["path"], reason))
                else:
                    setattr(report, added.outcome, getattr(report, added.outcome) + 1)
        report.total = len(writer.live)
    report.seconds = time.time() - t0
    return report
