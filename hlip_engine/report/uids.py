"""Deterministic UIDs for the objects a report writes.

The same study, model (checkpoint fingerprint) and prompts give the same Series and SOP Instance UIDs, so
storing a report again replaces the objects in the PACS instead of adding copies. Each UID is
``pydicom.uid.generate_uid`` with the parts as entropy (joined with a separator that cannot occur in them).
"""
from __future__ import annotations

import hashlib
import json


def report_key(study_uid: str, fingerprint: str, spec: dict) -> str:
    """One short hex key for (study, model, what was asked): the seed of every UID of the report."""
    text = json.dumps({"study": study_uid, "model": fingerprint, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def uid(key: str, *parts) -> str:
    """A UID derived from the report ``key`` and ``parts`` (e.g. ``("sr", "series")``)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["\x1f".join([key, *(str(p) for p in parts)])])


def study_uid_for(study) -> str:
    """The study's StudyInstanceUID, or a UID derived from its name when it has none (NIfTI, tensors)."""
    from pydicom.uid import generate_uid

    text = str(study.uid or study.source or "study")
    if _is_uid(text):
        return text
    return generate_uid(entropy_srcs=["hlip-study", text])


def _is_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and all(p.isdigit() and (p == "0" or not p.startswith("0"))
                                       for p in text.split("."))


def code_value(text: str) -> str:
    """A short code value (at most 16 characters) naming ``text`` in our private coding scheme."""
    return "H" + hashlib.sha1(text.encode()).hexdigest()[:12].upper()
