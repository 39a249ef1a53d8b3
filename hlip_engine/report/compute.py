"""What a report says, computed once: zero-shot probabilities and, per relevance prompt, where the model looks.

:func:`analyse` runs the same engine functions as ``hlip zeroshot`` and ``hlip relevance`` (the model's
preprocessing, :func:`~hlip_engine.zeroshot.build_classifier`, :func:`~hlip_engine.relevance.relevance`) and
gathers what the DICOM objects need: the algorithm's identity (model name, version, checkpoint
fingerprint), each finding's probability, and per relevance prompt its peak (``Relevance.peak()``, in the
scan's voxels and in patient LPS millimetres), the share of relevance per source scan, and the maps.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RelevanceFinding:
    """One relevance prompt: its map (``relevance.volumes`` on each source scan), peak and scan importance."""

    prompt: str
    relevance: Any  # hlip_engine.relevance.Relevance
    importance: dict[int, float]  # source scan index -> share of the relevance (sums to 1)
    peak_scan: int | None = None
    peak_voxel: tuple[int, int, int] | None = None  # (slice, row, column) on study.scans[peak_scan]
    peak_lps: tuple[float, float, float] | None = None  # patient LPS mm of peak_voxel


@dataclass
class Analysis:
    """Everything a report writes, before any DICOM is made."""

    study: Any  # hlip_engine.study.Study
    model_name: str
    model_version: str
    fingerprint: str  # sha256 of the checkpoint (or of the weights for a model made in memory)
    mode: str  # "softmax" or "binary" ("" without zero-shot classes)
    prompt_set: str  # the set's name, or "" for free prompts
    templates: list[str]
    findings: dict[str, float]  # class -> probability, in class order
    relevance: list[RelevanceFinding] = field(default_factory=list)
    scan_indices: list[int] = field(default_factory=list)  # source scans the model used
    method: str = ""  # relevance method
    spec: dict = field(default_factory=dict)  # what was asked (the seed of the report's UIDs)


def model_fingerprint(model) -> str:
    """sha256 of the model's checkpoint file (``hlip_engine.model.checkpoint.model_fingerprint``), or of its
    weights when it was not loaded from a file."""
    path = ((getattr(model, "config", None) or {}).get("source") or {}).get("path")
    if path and Path(path).exists():
        from ..model.checkpoint import model_fingerprint as file_fingerprint

        return file_fingerprint(path)
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def without_own_results(study):
    """The study without scans that are Parametric Maps (an earlier report's relevance maps stored with the
    study are results, not images the model should read); each left out is listed in ``skipped``."""
    from dataclasses import replace

    maps = [s for s in study.scans if str(s.attributes.get("SOPClassUID", "")) == PARAMETRIC_MAP_STORAGE]
    if not maps:
        return study
    left_out = {id(s) for s in maps}
    return replace(study, scans=[s for s in study.scans if id(s) not in left_out],
                   skipped=[*study.skipped, *((f"series {s.series_number} ({s.description})",
                                               "a parametric map (a result such as an earlier HLIP relevance map), "
                                               "not an image for the model") for s in maps)])


def _set_name(prompt_set) -> str:
    """The name a prompt set is recorded under: its name, a model's own set's ``name``, "" for none."""
    if isinstance(prompt_set, dict):
        return str(prompt_set.get("name") or "model prompts")
    return prompt_set or ""


def _set_templates(prompt_set, templates, template_set) -> list[str]:
    if templates:
        return list(templates)
    if not prompt_set:
        return []
    from ..zeroshot import resolve_prompt_set

    chosen = prompt_set if isinstance(prompt_set, dict) else resolve_prompt_set(prompt_set)
    spec = chosen.get("templates") or []
    if isinstance(spec, dict):
        key = template_set if template_set in spec else ("volume" if "volume" in spec else next(iter(spec), None))
        spec = spec.get(key, []) if key else []
    return list(spec)


def analyse(model, study, *, prompt_set: str | dict | None = None, prompts=None, relevance_prompts=(),
            templates=None, template_set: str | None = None, mode: str | None = None,
            recipe: str | None = None, slices: int | None = None, method: str | None = None,
            prepared=None) -> Analysis:
    """Zero-shot probabilities (a prompt set or free prompts; none when neither is given) and one relevance
    map per prompt of ``relevance_prompts`` for ``study`` with ``model``."""
    import torch

    from .. import __version__
    from ..relevance import relevance as explain
    from ..search import encode_prepared
    from ..zeroshot import build_classifier

    if prompt_set is not None and prompts is not None:
        raise ValueError("give a prompt set or free prompts, not both")
    relevance_prompts = [p for p in (relevance_prompts or ()) if str(p).strip()]
    if prompt_set is None and prompts is None and not relevance_prompts:
        raise ValueError("nothing to report: give a prompt set, prompts or relevance prompts")
    if prepared is None:
        study = without_own_results(study)
        options = {"slices": slices} if slices else {}
        prepared = model.prepare(study, recipe, **options)
    used_templates = _set_templates(prompt_set, templates, template_set)
    findings: dict[str, float] = {}
    used_mode = ""
    if prompt_set is not None or prompts is not None:
        free = prompts if isinstance(prompts, dict) or prompts is None else list(prompts)
        classifier = build_classifier(model, prompt_set=prompt_set, prompts=free,
                                      templates=list(templates) if templates else None, mode=mode,
                                      template_set=template_set)
        embedding = torch.from_numpy(encode_prepared(model, [prepared.tensor])[0])
        findings = {k: float(v) for k, v in classifier.classify(embedding).items()}
        used_mode = classifier.mode
    rel_templates = list(templates) if templates else (used_templates or None)
    results = []
    used_method = ""
    for prompt in relevance_prompts:
        rel = explain(model, prepared, str(prompt), templates=rel_templates, method=method)
        used_method = rel.method
        order, totals = rel.source_importance()
        item = RelevanceFinding(prompt=str(prompt), relevance=rel,
                                importance={int(k): float(v) for k, v in zip(order, totals)})
        found = rel.peak()
        if found is not None:
            k, voxel = found
            item.peak_scan, item.peak_voxel = int(k), tuple(int(v) for v in voxel)
            item.peak_lps = tuple(float(v) for v in study.scans[k].world(voxel))
        results.append(item)
    config = getattr(model, "config", None) or {}
    fingerprint = model_fingerprint(model)
    spec = {"prompt_set": prompt_set or "", "prompts": prompts if isinstance(prompts, dict) else list(prompts or []),
            "relevance": relevance_prompts,
            "templates": list(templates or []), "template_set": template_set or "", "mode": mode or "",
            "recipe": recipe or "", "slices": slices or 0, "method": method or ""}
    return Analysis(study=study, model_name=str(config.get("name") or "hlip"),
                    model_version=str(config.get("version") or f"hlip-napari {__version__}"),
                    fingerprint=fingerprint, mode=used_mode, prompt_set=_set_name(prompt_set),
                    templates=list(used_templates), findings=findings, relevance=results,
                    scan_indices=list(dict.fromkeys(int(k) for k in prepared.scan_indices)),
                    method=used_method, spec=spec)
