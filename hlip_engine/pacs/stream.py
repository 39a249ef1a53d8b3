"""Studies straight from a PACS, one at a time, for the index builder (and anything else that walks an archive).

    for item in iter_node_studies("dicom://PACS@host:104", cache, modality="MR"):
        if item["error"]: report(item["study_uid"], item["error"]); continue
        study = load_study(item["path"])              # the ordinary loader
        ...embed...
        if not keep and not item["cached"]: item["drop"]()   # free the disk once the study is embedded

Each item is ``{"node", "study_uid", "record", "path", "error", "cached", "drop"}``: ``record`` is the find
result, ``path`` the cached folder (None on error), ``error`` one line or "" (one bad study never stops the
walk), ``cached`` whether the whole study was in the cache before this walk came to it (then it was not
retrieved again, and a caller that only borrows the cache leaves it there), ``drop`` removes the study from
the cache. ``skip`` (a set of UIDs, e.g. those already in a resumed index) are not retrieved at all.
``records`` (find results from an earlier ``find_studies``, e.g. one worker's share of them) are walked
instead of finding again; the filters are then not used.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from .cache import StudyCache
from .client import PacsClient
from .connect import connect
from .errors import PacsCancelled, PacsError
from .query import check_uid


def iter_node_studies(node, cache: StudyCache | None = None, *, skip=(), limit: int | None = None,
                      progress=None, records: Iterable[dict] | None = None, **filters) -> Iterator[dict]:
    cache = cache if isinstance(cache, StudyCache) else StudyCache(cache)
    client = node if isinstance(node, PacsClient) else connect(node)
    try:
        if records is None:
            records = client.find_studies(limit=limit, **filters)
        for rec in records:
            uid = rec["study_uid"]
            if uid in skip:
                continue
            item = {"node": client.node.key, "study_uid": uid, "record": rec, "path": None, "error": "",
                    "cached": False, "drop": _dropper(cache, uid)}
            try:
                item["cached"] = cache.complete(uid)
                item["path"] = client.retrieve(uid, cache, progress=progress)
            except PacsCancelled:
                raise
            except PacsError as e:
                item["error"] = str(e)
            except OSError as e:  # a full disk, an unwritable cache: this study is lost, not the walk
                item["error"] = f"cannot write the study cache ({e.strerror or e})"
            yield item
    finally:
        if client is not node:
            client.close()


def _dropper(cache: StudyCache, uid: str):
    """Remove the study from the cache; nothing for a UID that names no study folder (a server's bad answer
    must never make ``cache.remove`` take another folder, or the cache itself)."""
    try:
        check_uid(uid)
    except PacsError:
        return lambda: None
    return lambda: cache.remove(uid)
