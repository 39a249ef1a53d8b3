"""Serve the engine over HTTP: one GPU box holds the model and the index, napari on any workstation asks it.

  hlip serve --model CKPT --index DIR [--host 127.0.0.1] [--port 8400] [--token-file F] [--pacs NODE]
             [--max-upload-mb 2048] [--workers N] [--ssl-keyfile KEY --ssl-certfile CERT]

Every route but /v1/health needs `Authorization: Bearer TOKEN`; the token is read from --token-file or
the HLIP_TOKEN environment variable (make one: python -c "import secrets; print(secrets.token_urlsafe(32))").
It binds to loopback unless --host says otherwise; off loopback, use TLS (--ssl-keyfile/--ssl-certfile,
passed to uvicorn) or a TLS-terminating proxy. Routes: /v1/health, /v1/info, /v1/search, /v1/zeroshot,
/v1/relevance, /v1/embed, /openapi.json. The answers are the CLI's --json documents.
"""
from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

NAME = "serve"
HELP = "serve search, zero-shot, relevance and embeddings over HTTP (FastAPI + uvicorn)"
MIN_TOKEN = 16
LOOPBACK = ("127.0.0.1", "localhost", "::1")
REQUEST_HEAD_BYTES = 4 << 20  # request line + headers: room for every query string the API documents


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="CKPT", help="the checkpoint the index was built with")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder made by `hlip index build`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8400, help="TCP port (default 8400)")
    p.add_argument("--token-file", metavar="F", help="file holding the bearer token (default: $HLIP_TOKEN)")
    p.add_argument("--pacs", metavar="NODE", help="PACS node (URL or nodes-file name) for studies not in the index")
    p.add_argument("--max-upload-mb", type=int, default=2048, help="largest study upload accepted (default 2048)")
    p.add_argument("--workers", type=int, default=2, help="threads reading and preprocessing studies (default 2)")
    p.add_argument("--max-queue", type=int, default=32,
                   help="study jobs in flight before new ones get 429 + Retry-After (default 32)")
    p.add_argument("--max-batch", type=int, default=8, help="studies per forward when requests queue (default 8)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long an idle model waits for more studies to batch (default 5 ms)")
    p.add_argument("--device", help="torch device (default: CUDA when available)")
    p.add_argument("--tmp-dir", metavar="DIR", help="where uploads are unpacked (default: the system's)")
    p.add_argument("--ssl-keyfile", metavar="KEY", help="TLS private key (uvicorn's --ssl-keyfile)")
    p.add_argument("--ssl-certfile", metavar="CERT", help="TLS certificate chain (uvicorn's --ssl-certfile)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def read_token(token_file: str | None) -> str:
    """The bearer token from the file or $HLIP_TOKEN; a clear error when there is none or it is too short."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise FileNotFoundError(f"token file not found: {path}")
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            print(f"hlip serve: warning: {path} is readable by other users (chmod 600 it)", file=sys.stderr)
        token = path.read_text().strip()
        where = str(path)
    else:
        token = os.environ.get("HLIP_TOKEN", "").strip()
        where = "$HLIP_TOKEN"
    if not token:
        raise ValueError("no token: pass --token-file F or set HLIP_TOKEN (make one with: python -c "
                         "\"import secrets; print(secrets.token_urlsafe(32))\")")
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise ValueError(f"the token in {where} must be at least {MIN_TOKEN} characters with no spaces")
    return token


def run(args) -> int:
    for name in ("max_upload_mb", "workers", "max_queue", "max_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        raise ValueError("TLS needs both --ssl-keyfile and --ssl-certfile")
    token = read_token(args.token_file)
    if not Path(args.model).exists():
        raise FileNotFoundError(f"model checkpoint not found: {args.model}")
    if not Path(args.index).is_dir():
        raise FileNotFoundError(f"index folder not found: {args.index}")

    import uvicorn

    from hlip_engine.serve import Engine, ServeConfig, create_app

    config = ServeConfig(model=args.model, index=args.index, token=token, host=args.host, port=args.port,
                         pacs=args.pacs, max_upload_mb=args.max_upload_mb, workers=args.workers,
                         max_queue=args.max_queue, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                         device=args.device, tmp_dir=args.tmp_dir)
    engine = Engine(config)
    if engine.pacs_problem:
        print(f"hlip serve: warning: --pacs {args.pacs} is not usable ({engine.pacs_problem}); studies not in "
              "the index will be refused", file=sys.stderr)
    if args.host not in LOOPBACK and not args.ssl_certfile:
        print(f"hlip serve: warning: listening on {args.host} without TLS; the token and studies cross the "
              "network in clear (use --ssl-keyfile/--ssl-certfile or a TLS proxy)", file=sys.stderr)
    scheme = "https" if args.ssl_certfile else "http"
    print(f"hlip serve: {scheme}://{args.host}:{args.port} - {engine.model.config.get('name')} on "
          f"{engine.model.device}, index of {len(engine.index)} studies", file=sys.stderr, flush=True)
    try:
        uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level=args.log_level,
                    ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile, timeout_graceful_shutdown=5,
                    h11_max_incomplete_event_size=REQUEST_HEAD_BYTES)
    finally:
        engine.close()
    return 0
