"""The one error type a request handler raises for the client's own mistakes (always a 4xx)."""
from __future__ import annotations


class ClientError(Exception):
    """A 4xx answer: ``status`` and a one-line ``reason`` (plus headers, e.g. Retry-After for a 429)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        if not 400 <= int(status) < 500:
            raise ValueError(f"ClientError is for 4xx answers, got {status}")
        self.status = int(status)
        self.reason = " ".join(str(reason).split())
        self.headers = dict(headers or {})
