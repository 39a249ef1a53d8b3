"""Studies straight from a PACS, one at a time, for the index builder (and anything else that walks an archive).

    for item in iter_node_studies("dicom://PACS@host:104", cache, modality="MR"):
        if item["error"]: report(item["study_uid"], item["error"]); continue
        study = load_study(item["path"])              # the ordinary loader
        ...embed...
        if not keep: item["drop"]()                    # free the disk once the study is embedded

Each item is ``{"node", "study_uid", "record", "path", "error", "drop"}``: ``record`` is the find result,
``path`` the cached folder (None on error), ``error`` one line or "" (one bad study never stops the walk),
``drop`` removes the study from the cache. ``skip`` (a set of UIDs, e.g. those already in a resumed index)
are not retrieved at all.
"""
from __future__ import annotations

from collections.abc import Iterator

from .cache import StudyCache
from .client import PacsClient
from .connect import connect
from .errors import PacsCancelled, PacsError


def iter_node_studies(node, cache: StudyCache | None = None, *, skip=(), limit: int | None = None,
                      progress=None, **filters) -> Iterator[dict]:
    cache = cache if isinstance(cache, StudyCache) else StudyCache(cache)
    client = node if isinstance(node, PacsClient) else connect(node)
    try:
        records = client.find_studies(limit=limit, **filters)
        for rec in records:
            uid = rec["study_uid"]
            if uid in skip:
                continue
            item = {"node": client.node.key, "study_uid": uid, "record": rec, "path": None, "error": "",
                    "drop": (lambda u=uid: cache.remove(u))}
            try:
                item["path"] = client.retrieve(uid, cache, progress=progress)
            except PacsCancelled:
                raise
            except PacsError as e:
                item["error"] = str(e)
            yield item
    finally:
        if client is not node:
            client.close()
