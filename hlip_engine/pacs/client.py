"""One PACS interface over two protocols: ``connect(node)`` gives a :class:`PacsClient` for either.

    client = connect("dicom://ORTHANC@pacs:4242")        # or "https://pacs/dicom-web", or a nodes-file name
    client.echo()                                          # seconds for a round trip; PacsError if down
    studies = client.find_studies(modality="CT", date_from="2024-01-01")
    path = client.retrieve(studies[0]["study_uid"], cache)  # a folder hlip_engine.io.load_study reads

``retrieve`` writes each series into the cache atomically, serves a repeated retrieve from the cache, and
keeps the cache under its size limit. ``iter_retrieve`` is the same as a generator of progress events
(``{"series_uid", "series_index", "n_series", "done", "total", "series_done", "series_total", "cached"}``)
whose return value is the folder: GUI workers yield those events, and closing the generator stops cleanly.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from .cache import StudyCache
from .errors import PacsCancelled, PacsError
from .nodes import Node
from .query import check_uid, normalize_filters

Progress = Callable[[dict], None]


class PacsClient:
    """Base of :class:`~hlip_engine.pacs.dicomweb.DicomWebClient` and :class:`~hlip_engine.pacs.dimse.DimseClient`."""

    def __init__(self, node: Node):
        self.node = node

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.node.display!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    # --- what each protocol implements -----------------------------------------------------------
    def echo(self) -> float:
        raise NotImplementedError

    def _find_studies(self, filters: dict, include_patient: bool, limit: int | None) -> list[dict]:
        raise NotImplementedError

    def find_series(self, study_uid: str) -> list[dict]:
        raise NotImplementedError

    def thumbnail(self, study_uid: str, size: int = 64) -> bytes | None:
        """A small PNG of the study rendered by the server, or None (DIMSE servers render nothing)."""
        return None

    def _series_of(self, session, study_uid: str) -> list[dict]:
        """:meth:`find_series` within a retrieve's session (DIMSE asks on the association it retrieves on)."""
        return self.find_series(study_uid)

    def _session(self):
        """A context manager around one retrieve's transfers (an HTTP session, a DIMSE association)."""
        raise NotImplementedError

    def _fetch_series(self, session, study_uid: str, series: dict, folder: Path) -> Iterator[int]:
        """Write every instance of ``series`` into ``folder``, yielding the number written so far."""
        raise NotImplementedError

    # --- the shared interface ---------------------------------------------------------------------
    def find_studies(self, *, include_patient: bool = False, limit: int | None = None, **filters) -> list[dict]:
        """Studies matching the filters, newest first, as ``{study_uid, date, modality, description, series,
        instances}`` (plus ``patient_id``, ``patient_name``, ``accession`` with ``include_patient=True``)."""
        from .query import sort_studies

        return sort_studies(self._find_studies(normalize_filters(**filters), include_patient, limit))

    def retrieve(self, study_uid: str, cache: StudyCache | str | Path | None = None,
                 series: str | list[str] | None = None, progress: Progress | None = None,
                 cancel: threading.Event | Callable[[], bool] | None = None) -> Path:
        """Retrieve a study (or some of its series) into the cache; returns the study's folder."""
        gen = self.iter_retrieve(study_uid, cache, series=series, cancel=cancel)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(event)

    def iter_retrieve(self, study_uid: str, cache: StudyCache | str | Path | None = None,
                      series: str | list[str] | None = None,
                      cancel: threading.Event | Callable[[], bool] | None = None) -> Generator[dict, None, Path]:
        cache = cache if isinstance(cache, StudyCache) else StudyCache(cache)
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        if isinstance(series, str):
            series = [series]
        wanted = [check_uid(s, "SeriesInstanceUID") for s in series] if series else None
        stop = _cancel_check(cancel)
        with cache.lock(study_uid):
            cache.sweep(study_uid)
            if cache.complete(study_uid, wanted):
                cache.touch(study_uid)
                n = len(wanted) if wanted else len(cache.record(study_uid).get("all_series", []))
                yield {"series_uid": "", "series_index": n - 1, "n_series": n, "done": 1, "total": 1,
                       "series_done": 1, "series_total": 1, "cached": True}
                return cache.study_dir(study_uid)
            with self._session() as session:
                all_series = self._series_of(session, study_uid)
                if not all_series:
                    raise PacsError(f"{self.node}: study {study_uid} not found (no series)")
                chosen = all_series
                if wanted:
                    by_uid = {s["series_uid"]: s for s in all_series}
                    missing = [s for s in wanted if s not in by_uid]
                    if missing:
                        raise PacsError(f"{self.node}: series {missing[0]} is not in study {study_uid}")
                    chosen = [by_uid[s] for s in wanted]
                total = sum(s["instances"] for s in chosen) or len(chosen)
                done = 0
                for i, s in enumerate(chosen):
                    uid = check_uid(s["series_uid"], "SeriesInstanceUID")
                    event = {"series_uid": uid, "series_index": i, "n_series": len(chosen), "total": total,
                             "series_total": s["instances"], "cached": False}
                    if cache.has_series(study_uid, uid):
                        done += s["instances"]
                        yield event | {"done": done, "series_done": s["instances"], "cached": True}
                        continue
                    if stop():
                        raise PacsCancelled("retrieve cancelled")
                    with cache.writing_series(study_uid, uid) as tmp:
                        n = 0
                        for n in self._fetch_series(session, study_uid, s, tmp):
                            if stop():
                                raise PacsCancelled("retrieve cancelled")
                            yield event | {"done": done + n, "series_done": n}
                        n = sum(1 for _ in tmp.iterdir())
                        if n < s["instances"]:
                            raise PacsError(f"{self.node}: series {uid} came back with {n} of {s['instances']} "
                                            "instances; nothing of it was kept")
                        if n == 0:
                            raise PacsError(f"{self.node}: series {uid} came back empty")
                    cache.mark_series(study_uid, uid, n)
                    done += n
            fields = {"node": self.node.key}
            if not wanted:
                fields["all_series"] = [s["series_uid"] for s in all_series]
            cache.touch(study_uid, **fields)
        cache.evict(keep={study_uid})
        return cache.study_dir(study_uid)


def _cancel_check(cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    return cancel
