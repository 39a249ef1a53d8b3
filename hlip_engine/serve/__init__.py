"""``hlip serve``: the engine as an HTTP service (FastAPI + uvicorn) for napari on other machines.

    engine = Engine(ServeConfig(model="m.safetensors", index="lib.index", token=token))
    app = create_app(engine)             # then uvicorn.run(app, host="127.0.0.1", port=8400)

Files: ``errors.py`` (the one 4xx error type), ``uploads.py`` (size-limited, zip-slip-safe uploads
decoded by the project's loader), ``worker.py`` (the model thread: micro-batched encodes, exclusive
relevance jobs), ``engine.py`` (the model, index, pools, admission, and each question as the CLI's
``--json`` document), ``app.py`` (routes, bearer token, error shapes). The client is
:mod:`hlip_engine.remote`. Torch loads when an Engine is made, not when this package is imported.
"""
from __future__ import annotations

from .engine import Engine, ServeConfig
from .errors import ClientError

__all__ = ["ClientError", "Engine", "ServeConfig", "create_app"]


def create_app(engine: Engine):
    from .app import create_app as _create

    return _create(engine)
