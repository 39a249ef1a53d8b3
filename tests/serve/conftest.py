"""A real `hlip serve` process on a free loopback port: the demo model, an index built here, HTTP only.

The library (6 phantom studies, real DICOM) and its index are built once per session; the servers are
started with ``python -m hlip_engine.cli serve`` and stopped (SIGTERM, then SIGKILL) at the end.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from keyring.backend import KeyringBackend

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "hlip_engine" / "weights" / "hlip_demo.safetensors"
TOKEN = "serve-test-token-0123456789abcdef"
UPLOAD_MB = 8  # small, so that 413 and zip bombs are cheap to test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    token: str
    proc: subprocess.Popen
    tmp_dir: Path  # where it unpacks uploads (must be empty between requests)
    log: Path

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.token}", **extra}


def start_server(root: Path, index: Path, *extra: str, name: str = "server", scheme: str = "http",
                 cafile: Path | None = None) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    tmp_dir = root / "uploads"
    tmp_dir.mkdir()
    port = free_port()
    log = root / f"{name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "TMPDIR": str(tmp_dir), "HLIP_TOKEN": ""}
    cmd = [sys.executable, "-m", "hlip_engine.cli", "serve", "--model", str(DEMO), "--index", str(index),
           "--port", str(port), "--token-file", str(token_file), "--tmp-dir", str(tmp_dir),
           "--max-upload-mb", str(UPLOAD_MB), "--device", "cpu", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"{scheme}://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(cafile)) if scheme == "https" else None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hlip serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=2, context=context) as r:
                if json.loads(r.read()) == {"status": "ok"}:
                    return Server(url, port, TOKEN, proc, tmp_dir, log)
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"hlip serve did not answer within 120 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def indexed_library(root: Path, n: int, seed: int = 18) -> dict:
    """``n`` phantom studies (MR and CT, real DICOM) in ``root``/lib and an index of them built with the demo
    model by `hlip index build`: {root, records, index}."""
    from hlip_engine.cli import main as hlip
    from hlip_engine.demo import make_studies

    records = make_studies(root / "lib", n, seed=seed)
    index = root / "lib.index"
    assert hlip(["index", "build", str(root / "lib"), "--model", str(DEMO), "--index", str(index),
                 "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    return {"root": root, "records": records, "index": index}


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    """6 phantom studies and their index (:func:`indexed_library`)."""
    return indexed_library(tmp_path_factory.mktemp("serve_library"), 6)


@pytest.fixture(scope="session")
def server(library, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("serve_main"), library["index"])
    yield srv
    stop_server(srv.proc)


@pytest.fixture(scope="session")
def local(library):
    """The same engine in this process: what the server's answers must equal."""
    import torch

    from hlip_engine.model import load_model
    from hlip_engine.search import open_index

    torch.set_num_threads(2)
    model = load_model(DEMO, device="cpu")
    index = open_index(library["index"], model)
    yield {"model": model, "index": index}
    index.close()


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def server_factory(library, tmp_path_factory):
    """Start more servers (other options) on the session's index; all are stopped at the end."""
    started: list[Server] = []

    def start(*extra: str, name: str = "extra", **options) -> Server:
        srv = start_server(tmp_path_factory.mktemp(f"serve_{name}"), library["index"], *extra, name=name, **options)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv.proc)


class MemoryKeyring(KeyringBackend):
    """A real keyring backend that keeps passwords in memory (the test machine has no OS keyring)."""

    priority = 1

    def __init__(self):
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.store.get((service, username))

    def set_password(self, service, username, password):
        self.store[(service, username)] = password

    def delete_password(self, service, username):
        from keyring.errors import PasswordDeleteError

        if (service, username) not in self.store:
            raise PasswordDeleteError(username)
        del self.store[(service, username)]


def in_memory_keyring():
    """Install a :class:`MemoryKeyring` as keyring's backend; yields it, then puts the previous one back."""
    import keyring

    before = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    try:
        yield ring
    finally:
        keyring.set_keyring(before)


@pytest.fixture
def memory_keyring():
    yield from in_memory_keyring()
