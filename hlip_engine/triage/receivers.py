"""Receiver processes: the listener's C-STORE SCP in N processes sharing one port (SO_REUSEPORT).

Why processes: receiving is Python work per instance (PDU handling, the spool's file operations); in one
process the associations' threads and the scoring take turns on one interpreter lock, so four concurrent
associations receive slower than one. Each receiver process runs its own pynetdicom server on the same port
(the kernel spreads new associations over them) and writes into the shared spool (spool.py: a partial folder of
its own, then an atomic rename into the study's folder); the listener's process adopts the studies it finds
there (``Spool.rescan``) and does the rest. A receiver dies with the listener (PR_SET_PDEATHSIG), so a killed
listener leaves no process answering for it; the next start removes their partial files.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("hlip.listen")


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)


def _server_class():
    from pynetdicom.transport import ThreadedAssociationServer

    class ReusePortServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    return ReusePortServer


def receiver_main(root: str, aet: str, host: str, port: int, max_bytes: int, fsync: bool, max_associations: int,
                  parent: int, ready) -> None:
    """One receiver process: serve C-STORE into the spool at ``root`` until killed."""
    _die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    from .receive import StoreHandler, make_ae
    from .spool import Spool

    try:
        spool = Spool(Path(root), max_bytes=max_bytes, fsync=fsync, owner=False)
        handler = StoreHandler(spool)
        ae, handlers = make_ae(aet, handler, max_associations=max_associations)
        server = ae.make_server((host, port), evt_handlers=handlers, server_class=_server_class())
        ae._servers.append(server)  # as start_server does: its shutdown() removes it from there
    except Exception as e:  # noqa: BLE001 - told to the listener, which stops
        ready.put(f"{type(e).__name__}: {e}")
        return
    _warm_up()
    ready.put(int(server.server_address[1]))
    threading.Thread(target=_recount, args=(spool,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()


def _warm_up() -> None:
    """Import now what the first instance would otherwise wait for."""
    from pydicom.uid import UID

    from ..pacs.dimse_receive import _fast_socket_class
    from .stream import _spooling_store_class

    _fast_socket_class()
    _spooling_store_class()
    UID("1.2.840.10008.1.2").is_implicit_VR  # noqa: B018 - fills pydicom's UID tables


def _recount(spool) -> None:
    """The inbox as all receivers and the listener left it (each process counts only its own writes)."""
    while True:
        time.sleep(1.0)
        with contextlib.suppress(OSError):
            spool.bytes = spool.inbox_bytes()


class Receivers:
    """``n`` receiver processes on one port (0: the first picks a free one)."""

    def __init__(self, n: int, root: Path, *, aet: str, host: str, port: int, max_bytes: int, fsync: bool,
                 max_associations: int):
        self.n, self.root, self.aet, self.host, self.port = int(n), Path(root), aet, host, int(port)
        self.max_bytes, self.fsync, self.max_associations = max_bytes, fsync, max_associations
        self.procs: list = []

    def start(self, timeout: float = 60.0) -> int:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch's threads
        for _ in range(self.n):
            ready = ctx.Queue()
            p = ctx.Process(target=receiver_main, name="hlip-receiver", daemon=True,
                            args=(str(self.root), self.aet, self.host, self.port, self.max_bytes, self.fsync,
                                  self.max_associations, os.getpid(), ready))
            p.start()
            self.procs.append(p)
            try:
                got = ready.get(timeout=timeout)
            except Exception:  # noqa: BLE001 - queue.Empty: it never said
                got = "did not start"
            if not isinstance(got, int):
                self.stop()
                raise ValueError(f"cannot listen on port {self.port}: {got}")
            self.port = got  # the others join the port the first one got
        return self.port

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        self.procs = []
