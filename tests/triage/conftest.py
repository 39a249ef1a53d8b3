"""Fixtures of the triage tests: demo phantom studies and `hlip listen` processes stopped after each test."""
from __future__ import annotations

from pathlib import Path

import pytest
from triage_helpers import ListenerProcess, free_port


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> dict:
    """Four demo phantoms (3 MR, 1 head CT with a haemorrhage) and their study UIDs and records."""
    from hlip_engine.demo import make_studies

    root = tmp_path_factory.mktemp("phantoms")
    records = make_studies(root / "base", 4, seed=3)
    return {"root": root, "records": records}


@pytest.fixture
def listener_factory(tmp_path):
    started = []

    def make(*extra, quiet_s: float = 2.0, index: Path | None = None, port: int | None = None) -> ListenerProcess:
        lp = ListenerProcess(index or tmp_path / "lib.index", port or free_port(), tmp_path / "listen.log", *extra,
                             quiet_s=quiet_s)
        started.append(lp)
        return lp

    yield make
    for lp in started:
        lp.stop()


