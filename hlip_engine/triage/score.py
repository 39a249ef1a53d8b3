"""Scoring a study by the triage rules: the matching rule's prompt set against the study's embedding.

The model's own prompt set ("prompt_set": "model" in a rule) is the ``zeroshot`` block of its config; class
vectors are computed once per rule and reused for every study.
"""
from __future__ import annotations

import numpy as np

from .rules import Rule, Rules, RulesError, Verdict, check_model_classes


def body_parts(study) -> set[str]:
    """BodyPartExamined of the study's scans (upper case; empty when none says)."""
    return {str(s.attributes.get("BodyPartExamined") or "").strip().upper() for s in study.scans} - {""}


class Scorer:
    """The rules bound to one model; ``score(study, embedding)`` -> :class:`Verdict`."""

    def __init__(self, model, rules: Rules):
        from ..zeroshot import model_zeroshot

        self.model, self.rules = model, rules
        own = model_zeroshot(getattr(model, "config", {})).get("prompt_set")
        self.model_set = own if isinstance(own, dict) else None
        if any(r.prompt_set == "model" for r in rules.rules):
            if self.model_set is None:
                raise RulesError(f"{rules.source}: a rule uses the model's prompt set, but this model names none; "
                                 "name a prompt set in the rule")
            classes = self.model_set.get("classes") or self.model_set.get("binary_prompts") or {}
            check_model_classes(rules, list(classes), self.model_set.get("name", "the model"))
        self._classifiers: dict[str, object] = {}

    def classifier(self, rule: Rule):
        if rule.name not in self._classifiers:
            from ..zeroshot import build_classifier

            spec = self.model_set if rule.prompt_set == "model" else rule.prompt_set
            self._classifiers[rule.name] = build_classifier(self.model, prompt_set=spec)
        return self._classifiers[rule.name]

    def score(self, modality: str, parts: set[str], embedding: np.ndarray) -> Verdict:
        """The verdict for a study of ``modality`` / body ``parts`` with this (normalised) embedding."""
        import torch

        rule = self.rules.rule_for(modality, parts)
        if rule is None:
            return self.rules.judge(None, {})
        probs = self.classifier(rule).classify(torch.as_tensor(np.asarray(embedding, dtype=np.float32)))
        return self.rules.judge(rule, {k: round(float(v), 4) for k, v in probs.items()})
