"""``hlip``: the command-line tool. Each subcommand is one module in :mod:`hlip_engine.commands`.

A command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
it imports heavy packages (torch, faiss, pydicom) inside ``run`` so that ``hlip --help`` stays fast.
User mistakes (a bad path, a wrong checkpoint, an unreadable study) end in one clear line, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from importlib import metadata

from . import commands
from .study import StudyLoadError

# What `pip install "hlip-napari[engine]"` adds to the client install (pyproject's engine extra), by import name.
ENGINE_MODULES = ("torch", "transformers", "safetensors", "faiss", "fastapi", "uvicorn", "multipart", "highdicom",
                  "SimpleITK", "nilearn")


def installed_version() -> str:
    """The installed distribution's version (pyproject's), or "unknown" when run from a tree not installed."""
    try:
        return metadata.version("hlip-napari")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hlip",
        description="HLIP Explorer: embed, search, classify and explain 3-D medical studies (not for clinical use).",
    )
    parser.add_argument("--version", action="version", version=f"hlip-napari {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (StudyLoadError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hlip {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in ENGINE_MODULES:
            raise
        print(f"hlip {args.command}: error: this command runs the engine, which is not installed here (no {top}): "
              f'pip install "hlip-napari[engine]", or ask a server (hlip serve) from the plugin', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hlip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
