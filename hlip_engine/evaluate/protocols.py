"""Evaluation protocols as data: ``hlip_engine/data/evaluation_protocols.json``.

A protocol says, for one benchmark and one version of the official evaluation code ("paper": the code
the paper's numbers came from; "2026": the current scripts), how the official dataset class reads the
data (``layout``, ``id_column``, ``labels``), how scans become model input (``input``), which texts make
the class vectors (``prompts`` x ``templates``), how an embedding becomes a score (``score``) and which
official metric set is computed on the scores (``metrics``), with the names the official script prints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PROTOCOLS_FILE = Path(__file__).resolve().parents[1] / "data" / "evaluation_protocols.json"
VERSIONS = ("paper", "2026")
SCORES = ("pair-softmax", "cosine", "scaled-logits", "softmax")


@dataclass(frozen=True)
class Protocol:
    """One benchmark's zero-shot evaluation, one official version."""

    benchmark: str
    version: str  # as asked ("paper" / "2026")
    resolved: str  # the version whose data it is (a benchmark with one official protocol answers both)
    source: str
    layout: str
    id_column: str
    labels: tuple[str, ...]  # CSV columns read as 0/1 targets, in this order
    names: tuple[str, ...]  # class names in metric keys, aligned with labels
    prompts: tuple  # per class: a text, a (negative, positive) pair, or several phrasings
    templates: tuple[str, ...]
    score: str
    input: dict
    metrics: str
    prefix: str = ""
    subdir: str = ""
    merge: dict | None = None
    tasks: tuple = ()
    text: tuple[str, ...] = ()
    about: str = ""
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-friendly summary for reports."""
        return {"benchmark": self.benchmark, "protocol": self.version, "protocol_data": self.resolved,
                "source": self.source, "score": self.score, "metrics": self.metrics,
                "classes": list(self.names), "templates": list(self.templates)}


@lru_cache(maxsize=1)
def _load() -> dict:
    return json.loads(PROTOCOLS_FILE.read_text())["benchmarks"]


def benchmarks() -> list[str]:
    return list(_load())


def get_protocol(benchmark: str, version: str = "paper") -> Protocol:
    """The protocol of ``benchmark`` at ``version``; ValueError naming the known ones otherwise."""
    data = _load()
    if benchmark not in data:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(data)}")
    versions = data[benchmark]["protocols"]
    if version not in versions:
        raise ValueError(f"benchmark {benchmark}: unknown protocol {version!r}; known: {', '.join(versions)}")
    resolved = version
    spec = versions[version]
    while isinstance(spec, str):  # an alias: this benchmark has one official protocol
        resolved, spec = spec, versions[spec]
    spec = dict(spec)
    if spec["score"] not in SCORES:
        raise ValueError(f"{PROTOCOLS_FILE}: {benchmark}/{resolved}: unknown score {spec['score']!r}")
    n = len(spec["labels"])
    if not (len(spec["names"]) == len(spec["prompts"]) == n):
        raise ValueError(f"{PROTOCOLS_FILE}: {benchmark}/{resolved}: labels, names and prompts differ in length")
    known = {"source", "layout", "id_column", "labels", "names", "prompts", "templates", "score", "input",
             "metrics", "prefix", "subdir", "merge", "tasks", "text"}
    return Protocol(
        benchmark=benchmark, version=version, resolved=resolved, source=spec["source"], layout=spec["layout"],
        id_column=spec["id_column"], labels=tuple(spec["labels"]), names=tuple(spec["names"]),
        prompts=tuple(tuple(p) if isinstance(p, list) else p for p in spec["prompts"]),
        templates=tuple(spec["templates"]), score=spec["score"], input=dict(spec["input"]),
        metrics=spec["metrics"], prefix=spec.get("prefix", ""), subdir=spec.get("subdir", ""),
        merge=spec.get("merge"), tasks=tuple(spec.get("tasks", ())), text=tuple(spec.get("text", ())),
        about=data[benchmark].get("about", ""), extra={k: v for k, v in spec.items() if k not in known})
