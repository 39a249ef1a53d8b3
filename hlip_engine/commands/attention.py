"""``hlip attention``: the old name of ``hlip relevance``, kept so that existing scripts still run.

It takes the same options and writes the same files, and first prints a one-line deprecation notice on
stderr that points to ``hlip relevance``, the name used everywhere else.
"""
from __future__ import annotations

import argparse
import sys

from . import relevance
from .relevance import add_arguments

NAME = "attention"
HELP = "deprecated: use `hlip relevance` (same options)"
NOTICE = "hlip attention is deprecated and will be removed: use `hlip relevance` (same options and files)"
__all__ = ["NAME", "HELP", "NOTICE", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    print(NOTICE, file=sys.stderr)
    return relevance.run(args)
