"""Open a search hit of an index built from a PACS (``hlip index build NODE ...``): where its study is now.

    path = study_path_of_hit(hit)      # a hit of `hlip search --json`, or Hit.as_dict() / Hit.meta
    study = load_study(path)

Such an index records each study's ``node`` (:func:`node_address`: the nodes-file name, or the URL with the
DIMSE options a retrieve needs; never a credential) and its ``study_uid``. Its ``path`` was the study's folder
in the study cache while it was embedded; the build dropped it from there unless ``--keep``. So a hit opens
from that folder when it is still there, whole, and is otherwise retrieved again from its node into the
study cache. A hit of a local library (no ``node``) is its own path.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from .cache import StudyCache
from .errors import PacsCancelled, PacsError
from .nodes import DEFAULT_CALLING_AET, Node


def node_address(node: Node) -> str:
    """What an index records as a study's ``node``: enough to reach it again, nothing secret.

    A nodes-file name stays a name (the file says the rest, and the keyring holds its secrets); a URL typed
    in is its display form, with ``?calling_aet=...&move_port=...`` for a DIMSE node that needed them."""
    if node.name or node.kind != "dimse":
        return node.key
    options = {}
    if node.calling_aet and node.calling_aet != DEFAULT_CALLING_AET:
        options["calling_aet"] = node.calling_aet
    if node.move_port:
        options["move_port"] = node.move_port
    return node.display + (f"?{urlencode(options)}" if options else "")


def _cached_whole(path: Path, study_uid: str) -> bool | None:
    """Whether ``path`` is a study folder of a study cache holding the whole study; None when ``path`` is
    not a cache's study folder at all (then it is a local folder of its own)."""
    if path.name != study_uid or not (path.parent / ".meta").is_dir():
        return None
    try:
        return StudyCache(path.parent).complete(study_uid)
    except PacsError:
        return False


def study_path_of_hit(hit, cache: StudyCache | str | Path | None = None, progress=None) -> Path:
    """The folder of a hit's study: its recorded path when that is there (whole, for a cached one), else the
    study retrieved from the hit's node into ``cache`` (default: the user's study cache).

    ``hit``: a dict as ``hlip search --json`` prints it, or a ``search.Hit``. ``progress``: called with the
    retrieve's progress events, as :meth:`PacsClient.retrieve`. Raises PacsError naming the node when the study
    cannot be retrieved, or when the hit names no node and its path is gone.
    """
    if not isinstance(hit, dict) and hasattr(hit, "meta"):  # a search.Hit
        hit = hit.meta
    path = Path(str(hit.get("path") or "")) if hit.get("path") else None
    node = str(hit.get("node") or "")
    uid = str(hit.get("study_uid") or "")
    if path is not None and path.exists():
        if not node or not uid or _cached_whole(path, uid) is not False:
            return path
    if not node:
        raise PacsError(f"{path or 'this hit'}: the study's folder is not there, and the index records no PACS "
                        "node to retrieve it from")
    if not uid:
        raise PacsError(f"{node}: the hit records no StudyInstanceUID to retrieve")
    from .connect import connect

    cache = cache if isinstance(cache, StudyCache) else StudyCache(cache)
    try:
        with connect(node) as client:
            return client.retrieve(uid, cache, progress=progress)
    except PacsCancelled:
        raise
    except PacsError as e:
        raise PacsError(f"cannot open study {uid} from PACS node {node}: {e}") from None
