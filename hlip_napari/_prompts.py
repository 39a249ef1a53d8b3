"""The zero-shot prompt set a model and a study call for, when the reader has not chosen one.

A model's config may name it (``"zeroshot": {"prompt_set": NAME or {classes, templates, ...},
"template": "..."}``); a checkpoint saved before its config had one falls back to the registered config
of the same name (the demo model's own five findings). Otherwise the study decides: CT studies get a CT
prompt set and template (head: hemorrhage, else CT-RATE), MR studies the paper's pub-brain-5.
No Qt here; the prompt sets themselves are the engine's (:mod:`hlip_engine.zeroshot`).
"""
from __future__ import annotations

from hlip_engine import windows
from hlip_engine.zeroshot import model_zeroshot, resolve_prompt_set

CT_HEAD_SET, CT_BODY_SET, MR_SET = "head-ct-hemorrhage", "ct-rate", "pub-brain-5"


def default_prompt_set(config: dict, study=None) -> tuple[str, dict, str]:
    """(name, prompt-set spec as ``resolve_prompt_set`` gives it, why) for ``config`` and ``study``."""
    block = model_zeroshot(config)
    chosen = block.get("prompt_set")
    if isinstance(chosen, dict):
        spec, name, why = dict(chosen), str(chosen.get("name", "model prompts")), "the model's own prompt set"
    elif isinstance(chosen, str) and chosen:
        spec, name, why = resolve_prompt_set(chosen), chosen, "the model's default prompt set"
    else:
        modality = (getattr(study, "modality", "") or "").upper()
        if modality == "CT":
            name = CT_HEAD_SET if study is not None and study.scans and windows.body_part(study) == "head" \
                else CT_BODY_SET
            why = "a CT study"
        else:
            name, why = MR_SET, "an MR study" if modality == "MR" else "the paper's brain MRI set"
        spec = resolve_prompt_set(name)
    if block.get("template"):
        spec["templates"] = [str(block["template"])]
    return name, spec, why
