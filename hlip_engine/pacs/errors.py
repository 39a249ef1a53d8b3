"""PACS errors: one clear sentence each, safe to print (no passwords, no patient identifiers)."""
from __future__ import annotations


class PacsError(RuntimeError):
    """The PACS could not be reached, refused us, or broke off; the message says which and what to check."""


class PacsCancelled(PacsError):
    """A retrieve stopped because the user cancelled it; nothing half-retrieved is kept."""
