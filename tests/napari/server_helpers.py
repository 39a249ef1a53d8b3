"""A real `hlip serve` for the napari tests: tests/serve/conftest.py's start/stop helpers, loaded under a
name of their own (``import conftest`` would clash with the conftest of whichever test folder pytest
imported first), and a keyring that keeps the server's token in memory (the test machines have no OS
keyring)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SERVE_CONFTEST = Path(__file__).resolve().parents[1] / "serve" / "conftest.py"


def _serve_helpers():
    name = "hlip_serve_test_helpers"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, _SERVE_CONFTEST)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_helpers = _serve_helpers()
DEMO, TOKEN, Server = _helpers.DEMO, _helpers.TOKEN, _helpers.Server
start_server, stop_server, free_port = _helpers.start_server, _helpers.stop_server, _helpers.free_port
MemoryKeyring = _helpers.MemoryKeyring  # a real keyring backend that keeps passwords in memory
in_memory_keyring = _helpers.in_memory_keyring  # a generator: install it for a fixture's lifetime
indexed_library = _helpers.indexed_library


def use_server(box, url: str, token: str) -> None:
    """Choose "server" in a Model box as a user does: the Engine choice, then the URL and the token typed."""
    box.engine.setCurrentIndex(box.engine.findData("server"))
    box.url.setText(url)
    box.url.editingFinished.emit()
    box.token.setText(token)
    box.token.editingFinished.emit()


def use_this_computer(box) -> None:
    box.engine.setCurrentIndex(box.engine.findData("local"))
