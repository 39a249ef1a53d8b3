"""The model's own thread: study encodes are micro-batched, exclusive jobs (relevance) run alone.

One thread owns the image tower, so a forward never races another (relevance installs hooks on it),
and the event loop never waits on torch. Encodes that queue while the model is busy go through it
together: when a forward ends, every encode waiting (up to ``max_batch``) becomes one
``encode_prepared(model, [t1, t2, ...])`` call, the same encoding ``hlip index build`` uses for a batch
(studies of different scan counts are padded and masked inside the model: each embedding equals the one
computed alone, to float rounding). A short ``window_s`` after the first encode of an idle model lets
near-simultaneous requests share the forward.

Text work (search queries, zero-shot class vectors) runs in its own single thread so that a search
answers in milliseconds while a long relevance job holds the model thread.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

_STOP = object()


class ModelWorker:
    def __init__(self, model, *, max_batch: int = 8, window_s: float = 0.005):
        self.model = model
        self.max_batch = max(1, int(max_batch))
        self.window_s = max(0.0, float(window_s))
        self._queue: queue.Queue = queue.Queue()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # for /v1/info and tests
        self.busy_seconds: collections.deque[float] = collections.deque(maxlen=256)
        self._thread = threading.Thread(target=self._loop, name="hlip-model", daemon=True)
        self._thread.start()

    # --- submitting ---------------------------------------------------------------------------------
    def encode(self, tensor) -> Future:
        """One prepared study tensor [N, 1, D, H, W] -> Future of its embedding float32 [E]."""
        fut: Future = Future()
        self._queue.put(("encode", tensor, fut))
        return fut

    def call(self, fn, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the model thread, alone (no other forward meanwhile)."""
        fut: Future = Future()
        self._queue.put(("call", (fn, args, kwargs), fut))
        return fut

    def stop(self) -> None:
        self._queue.put((_STOP, None, None))
        self._thread.join(timeout=10)

    def mean_seconds(self) -> float:
        return sum(self.busy_seconds) / len(self.busy_seconds) if self.busy_seconds else 1.0

    # --- the thread ---------------------------------------------------------------------------------
    def _gather(self, first) -> tuple[list, bool]:
        items, stop = [first], False
        deadline = time.monotonic() + (self.window_s if first[0] == "encode" else 0.0)
        while sum(1 for kind, *_ in items if kind == "encode") < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item[0] is _STOP:
                stop = True
                break
            items.append(item)
        return items, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first[0] is _STOP:
                return
            items, stop = self._gather(first)
            encodes = [(t, f) for kind, t, f in items if kind == "encode" and f.set_running_or_notify_cancel()]
            calls = [(c, f) for kind, c, f in items if kind == "call" and f.set_running_or_notify_cancel()]
            if encodes:
                self._run_encodes(encodes)
            for (fn, args, kwargs), fut in calls:
                self._run(fut, fn, *args, **kwargs)
            if stop:
                return

    def _run_encodes(self, encodes: list[tuple[Any, Future]]) -> None:
        from hlip_engine.search import encode_prepared

        t0 = time.perf_counter()
        try:
            vectors = encode_prepared(self.model, [t for t, _f in encodes])
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for _t, fut in encodes:
                fut.set_exception(e)
            return
        finally:
            self.busy_seconds.append(time.perf_counter() - t0)
        self.batch_sizes.append(len(encodes))
        for (_t, fut), vec in zip(encodes, vectors):
            fut.set_result(vec)

    def _run(self, fut: Future, fn, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(e)
        finally:
            self.busy_seconds.append(time.perf_counter() - t0)
