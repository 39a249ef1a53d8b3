"""``hlip attention``: an alias of ``hlip relevance`` (the same options and files; "relevance" is the name)."""
from __future__ import annotations

from .relevance import add_arguments, run

NAME = "attention"
HELP = "alias of `hlip relevance` (relevance maps of one study for a prompt)"
__all__ = ["NAME", "HELP", "add_arguments", "run"]
