"""Zero-shot classification: text prompts become class vectors, a study's embedding scores against them.

As the paper: per class, every template is filled with every prompt of the class, encoded and
L2-normalised, averaged, and re-normalised; scores are ``exp(logit_scale) * image . class``.
Two modes: ``softmax`` over the classes (Pub-Brain-5), or ``binary`` -- one (negative, positive) pair
per class, probability = softmax over the pair's positive side (CT-RATE, RSNA / CQ500 style).
Prompt sets are data: ``hlip_engine/data/prompt_sets.json``. Torch loads only when vectors are computed,
so the GUI reads and resolves prompt sets through this module at start-up.

Every front end asks the same way and gets the same answer: ``default_prompt_set(config, study)`` is the
prompt set a model and a study call for when the reader names none, ``classifier_request`` turns what the
reader named (or nothing) into ``build_classifier``'s arguments, and ``zeroshot_document`` is the answer
(``hlip zeroshot --json``, ``POST /v1/zeroshot``, the napari widget):

    doc = zeroshot_document(model, study, embedding)                          # the model's default set
    doc = zeroshot_document(model, study, embedding, prompt_set="pub-brain-5")
    doc["probabilities"]  # {class: p}; also "study", "model", "mode", "prompt_set"
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_write

if TYPE_CHECKING:
    import torch

PROMPT_SETS = Path(__file__).with_name("data") / "prompt_sets.json"
MAX_SCALE = 100.0  # the learned temperature is clamped here in training; same at inference


@lru_cache(maxsize=1)
def load_prompt_sets() -> dict:
    sets = json.loads(PROMPT_SETS.read_text())
    return {k: v for k, v in sets.items() if not k.startswith("_")}


def prompt_set_names() -> list[str]:
    return list(load_prompt_sets())


def resolve_prompt_set(name: str) -> dict:
    """A named set with ``same_as`` / ``drop_classes`` applied."""
    sets = load_prompt_sets()
    if name not in sets:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(sets)}")
    spec = dict(sets[name])
    if "same_as" in spec:
        base = dict(resolve_prompt_set(spec.pop("same_as")))
        drop = set(spec.pop("drop_classes", []))
        for key in ("classes", "binary_prompts", "organ_of_class"):
            if key in base:
                base[key] = {c: v for c, v in base[key].items() if c not in drop}
        base.update(spec)
        spec = base
    return spec


@dataclass
class Classifier:
    """Class vectors ready to score embeddings.

    softmax: weights [K, E]; binary: weights [K, 2, E] (negative, positive).
    """

    names: list[str]
    mode: str
    weights: torch.Tensor
    scale: float

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, E] or [E] L2-normalised embeddings -> probabilities [B, K] or [K]."""
        import torch

        emb = torch.as_tensor(embeddings, dtype=torch.float32)
        single = emb.ndim == 1
        emb = emb[None] if single else emb
        if emb.shape[-1] != self.weights.shape[-1]:
            raise ValueError(f"embedding size {emb.shape[-1]} does not match the classifier's "
                             f"{self.weights.shape[-1]} (another model?)")
        w = self.weights.to(emb.device)
        if self.mode == "softmax":
            probs = (self.scale * emb @ w.T).softmax(dim=-1)  # [B, K]
        else:
            logits = self.scale * torch.einsum("be,kse->bks", emb, w)  # [B, K, 2]
            probs = logits.softmax(dim=-1)[..., 1]
        return probs[0] if single else probs

    def classify(self, embedding: torch.Tensor) -> dict[str, float]:
        """One embedding [E] -> {class: probability} in class order."""
        return dict(zip(self.names, self.probabilities(embedding).tolist()))


def model_zeroshot(config: dict) -> dict:
    """A model config's ``zeroshot`` block (its default prompt set and template), or the registered config's
    of the same name (checkpoints saved before their config had one); {} when none."""
    block = (config or {}).get("zeroshot")
    if block:
        return dict(block)
    name = (config or {}).get("name")
    if not name:
        return {}
    from .model.factory import get_config

    try:
        return dict(get_config(name).get("zeroshot") or {})
    except ValueError:  # an architecture not registered here
        return {}


CT_HEAD_SET, CT_BODY_SET, MR_SET = "head-ct-hemorrhage", "ct-rate", "pub-brain-5"


def default_prompt_set(config: dict, study=None) -> tuple[str, dict, str]:
    """The prompt set to use when the reader names none: (name, spec as :func:`resolve_prompt_set` gives
    it, why in a few words).

    A model's config may name it (``"zeroshot": {"prompt_set": NAME or {classes, templates, ...},
    "template": "..."}``); a checkpoint saved before its config had one falls back to the registered config
    of the same name (:func:`model_zeroshot`). Otherwise the study decides: a CT study gets a CT set (a
    head: hemorrhage, else CT-RATE), anything else the paper's brain MRI set (pub-brain-5). The config's
    ``template``, when it has one, replaces the set's templates.
    """
    block = model_zeroshot(config)
    chosen = block.get("prompt_set")
    if isinstance(chosen, dict):
        spec, name, why = dict(chosen), str(chosen.get("name", "model prompts")), "the model's own prompt set"
    elif isinstance(chosen, str) and chosen:
        spec, name, why = resolve_prompt_set(chosen), chosen, "the model's default prompt set"
    else:
        from . import windows

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


def classifier_request(config: dict, study=None, *, prompt_set: str | dict | None = None, prompts=None,
                       templates: list[str] | None = None, mode: str | None = None,
                       template_set: str | None = None) -> tuple[dict, str | None, str]:
    """What the reader asked for -> (``build_classifier`` keyword arguments, the prompt set's name or None
    for free prompts, why that set: "" unless it is the default).

    With neither ``prompt_set`` nor ``prompts``, the model's default set for ``study``
    (:func:`default_prompt_set`); ``templates``, ``mode`` and ``template_set`` apply to it as to any set.
    No model needed: a server checks a request before its study has arrived."""
    if prompt_set is not None and prompts is not None:
        raise ValueError("give a prompt set or prompts, not both")
    why = ""
    if prompt_set is None and prompts is None:
        name, prompt_set, why = default_prompt_set(config, study)
    elif isinstance(prompt_set, dict):
        name = str(prompt_set.get("name") or "prompts")
    else:
        name = prompt_set
    request = {"prompt_set": prompt_set, "prompts": prompts, "templates": templates or None, "mode": mode,
               "template_set": template_set}
    return request, name, why


def zeroshot_document(model, study, embedding, *, classifier: Classifier | None = None, label: str = "",
                      **asked) -> dict:
    """The zero-shot answer for one study, as every front end gives it: ``{"study", "model", "mode",
    "prompt_set", "probabilities"}`` (``prompt_set``: the set's name, None for free prompts; with neither a
    set nor prompts asked, the model's default set and ``"default_because"``: why that one).

    embedding: the study's L2-normalised embedding [E] (the model's own recipe: ``model.prepare`` +
    ``search.encode_prepared``). asked: ``prompt_set``, ``prompts``, ``templates``, ``mode``,
    ``template_set`` as :func:`build_classifier` takes them. classifier: one already built for this
    question (a server keeps them); then ``asked`` only names it. label: the study's name when it has no
    StudyInstanceUID (default: where it was read from)."""
    import torch

    from .search import study_label

    request, name, why = classifier_request(model.config, study, **asked)
    if classifier is None:
        classifier = build_classifier(model, **request)
    probs = classifier.classify(torch.as_tensor(embedding, dtype=torch.float32).reshape(-1))
    doc = {"study": study_label(study, label), "model": model.config.get("name"), "mode": classifier.mode,
           "prompt_set": name, "probabilities": probs}
    if why:
        doc["default_because"] = why
    return doc


def _fill(templates: list[str], prompts: list[str]) -> list[str]:
    return [t.format(p) if "{}" in t else t.replace("{c}", p) for p in prompts for t in templates] \
        if templates else list(prompts)


def class_vectors(model, groups: list[list[str]], batch: int = 128) -> torch.Tensor:
    """Phrasings per class -> unit vectors [K, E]: mean of the normalised text embeddings, re-normalised.

    All texts go through the text tower together, ``batch`` at a time.
    """
    import torch
    import torch.nn.functional as F

    flat = [t for g in groups for t in g]
    with torch.no_grad():
        emb = torch.cat([model.encode_text(flat[i:i + batch], normalize=True).float().cpu()
                         for i in range(0, len(flat), batch)])  # [T, E]
    out, start = [], 0
    for g in groups:
        out.append(F.normalize(emb[start:start + len(g)].mean(dim=0), dim=-1))
        start += len(g)
    return torch.stack(out)


def build_classifier(model, prompt_set: str | dict | None = None, prompts=None, templates: list[str] | None = None,
                     mode: str | None = None, template_set: str | None = None) -> Classifier:
    """From a named prompt set, or free ``prompts``.

    prompts: list[str] (one class each) or {class: str | [str, ...]} for softmax,
             or {class: (negative, positive)} with ``mode="binary"``.
    templates: e.g. ["This MRI study shows: {}."]; None = the set's templates, or the prompt as written.
    template_set: for sets with organ templates (CT-RATE): a key such as "volume", or "organ".
    """
    if (prompt_set is None) == (prompts is None):
        raise ValueError("give exactly one of prompt_set or prompts")
    organ_of = {}
    if prompt_set is not None:
        spec = resolve_prompt_set(prompt_set) if isinstance(prompt_set, str) else dict(prompt_set)
        set_templates = spec.get("templates") or []
        if isinstance(set_templates, dict):
            key = template_set or ("volume" if "volume" in set_templates else next(iter(set_templates)))
            if key == "organ":
                organ_of = {c: set_templates[o] for c, o in spec.get("organ_of_class", {}).items()}
                set_templates = next(iter(spec["templates"].values()))
            elif key not in set_templates:
                raise ValueError(f"template set {key!r} not in {list(set_templates)} (or 'organ')")
            else:
                set_templates = set_templates[key]
        templates = templates if templates is not None else set_templates
        if mode is None:
            mode = "binary" if "binary_prompts" in spec and "classes" not in spec else "softmax"
        prompts = spec.get("binary_prompts") if mode == "binary" else spec.get("classes")
        if prompts is None:
            raise ValueError(f"prompt set has no {'binary_prompts' if mode == 'binary' else 'classes'} for "
                             f"mode {mode!r}")
    mode = mode or "softmax"
    if mode not in ("softmax", "binary"):
        raise ValueError(f"unknown mode {mode!r}: 'softmax' or 'binary'")
    if isinstance(prompts, (list, tuple)):
        if mode == "binary":
            raise ValueError("binary mode needs {class: (negative prompt, positive prompt)}")
        prompts = {p: [p] for p in prompts}
    if not prompts:
        raise ValueError("no prompts given")
    templates = list(templates or [])
    names, groups = [], []
    for name, value in prompts.items():
        tpl = organ_of.get(name, templates)
        if mode == "binary":
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise ValueError(f"binary class {name!r} needs (negative, positive) prompts, got {value!r}")
            groups += [_fill(tpl, [value[0]]), _fill(tpl, [value[1]])]
        else:
            groups.append(_fill(tpl, [value] if isinstance(value, str) else list(value)))
        names.append(str(name))
    if mode == "softmax" and len(names) < 2:
        raise ValueError("softmax over one class is always 1: give two or more prompts (or use binary mode)")
    weights = class_vectors(model, groups)  # [K, E] or [2K, E]
    if mode == "binary":
        weights = weights.reshape(len(names), 2, -1)  # (negative, positive) per class
    scale = float(model.logit_scale.detach().exp().clamp(max=MAX_SCALE))
    return Classifier(names, mode, weights, scale)


def text_bars(probs: dict[str, float], width: int = 30) -> str:
    """A plain-text table: class, probability, bar."""
    if not probs:
        return ""
    pad = max(len(n) for n in probs)
    lines = []
    for name, p in probs.items():
        fill = int(round(max(0.0, min(1.0, p)) * width))
        lines.append(f"{name:<{pad}}  {p:6.3f}  {'#' * fill}{'.' * (width - fill)}")
    return "\n".join(lines)


def bar_chart(probs: dict[str, float], path: str | os.PathLike, title: str = "",
              xlabel: str = "probability") -> Path:
    """Horizontal bar chart PNG of class probabilities (headless matplotlib), written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    path = Path(path)
    names, values = list(probs)[::-1], list(probs.values())[::-1]
    fig = Figure(figsize=(6, 0.45 * len(names) + 1.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, values, color="#3b7dd8")
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    for y, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), y, f"{v:.2f}", va="center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
