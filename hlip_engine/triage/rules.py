"""Triage rules as data: which prompt set scores a study, and which finding above which threshold sets its priority.

A rules file (JSON; ``hlip_engine/data/triage_rules_demo.json`` is the demo model's)::

    {"format": "hlip-triage-rules", "version": 1,
     "priorities": ["STAT", "URGENT", "ROUTINE"],          # most urgent first
     "default_priority": "ROUTINE",
     "rules": [{"name": "head CT",
                "match": {"modality": ["CT"], "body_part": ["HEAD", "BRAIN", ""]},
                "prompt_set": "model",                      # the model's own set, a name from prompt_sets.json,
                                                            # or a set written out ({"classes": ...})
                "findings": {"haemorrhage": {"threshold": 0.5, "priority": "STAT"}}}]}

The first rule whose ``match`` fits a study (its modality, and BodyPartExamined of any scan; "" matches a
study that names none; a missing key matches anything) scores it: the prompt set gives a probability per
finding, every finding at or above its threshold raises the study to its priority, and the study's top finding is
the most urgent one raised (the most probable of the rule's findings when none is). Thresholds are operating
points and must be calibrated on the site's own labelled studies (``hlip evaluate``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "hlip-triage-rules"
DEMO_RULES = Path(__file__).resolve().parents[1] / "data" / "triage_rules_demo.json"


class RulesError(ValueError):
    """A rules file that cannot be used, with where and why."""


@dataclass
class Finding:
    name: str
    threshold: float
    priority: str


@dataclass
class Rule:
    name: str
    modality: tuple[str, ...] | None
    body_part: tuple[str, ...] | None
    prompt_set: str | dict
    findings: list[Finding]

    def matches(self, modality: str, body_parts: set[str]) -> bool:
        if self.modality is not None and modality.upper() not in self.modality:
            return False
        if self.body_part is not None:
            parts = {p.upper() for p in body_parts} or {""}
            if not parts & set(self.body_part):
                return False
        return True


@dataclass
class Verdict:
    """How a study was triaged: priority, top finding and its probability, the rule, every probability."""

    priority: str
    finding: str = ""
    score: float | None = None
    rule: str = ""
    raised: list[str] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass
class Rules:
    priorities: list[str]
    default_priority: str
    rules: list[Rule]
    source: str = ""
    about: str = ""

    def rank(self, priority: str) -> int:
        """0 for the most urgent priority; unknown ones after every known one."""
        return self.priorities.index(priority) if priority in self.priorities else len(self.priorities)

    def rule_for(self, modality: str, body_parts: set[str]) -> Rule | None:
        return next((r for r in self.rules if r.matches(modality or "", body_parts)), None)

    def judge(self, rule: Rule | None, probabilities: dict[str, float]) -> Verdict:
        """The verdict of ``rule`` on a study whose prompt-set probabilities are given."""
        if rule is None:
            return Verdict(self.default_priority)
        scored = [(f, float(probabilities[f.name])) for f in rule.findings if f.name in probabilities]
        raised = sorted(((f, p) for f, p in scored if p >= f.threshold), key=lambda fp: (self.rank(fp[0].priority), -fp[1]))
        if raised:
            top, p = raised[0]
            return Verdict(top.priority, top.name, p, rule.name, [f.name for f, _ in raised], probabilities)
        if not scored:
            return Verdict(self.default_priority, rule=rule.name, probabilities=probabilities)
        top, p = max(scored, key=lambda fp: fp[1])
        return Verdict(self.default_priority, top.name, p, rule.name, [], probabilities)


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and check a rules file (default: the demo model's); a RulesError says where and what is wrong."""
    path = Path(path) if path else DEMO_RULES
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: not valid JSON ({e})") from None
    return parse_rules(data, str(path))


def parse_rules(data: Any, source: str = "rules") -> Rules:
    def bad(where: str, what: str) -> RulesError:
        return RulesError(f"{source}: {where}: {what}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad("top level", f'not a triage rules file (expected "format": "{FORMAT}")')
    if data.get("version") != 1:
        raise bad("version", f"version {data.get('version')!r} is not one this HLIP Explorer reads (1)")
    priorities = data.get("priorities")
    if not (isinstance(priorities, list) and priorities and all(isinstance(p, str) and p for p in priorities)):
        raise bad("priorities", "must be a list of names, most urgent first, e.g. [\"STAT\", \"ROUTINE\"]")
    default = data.get("default_priority", priorities[-1])
    if default not in priorities:
        raise bad("default_priority", f"{default!r} is not one of {priorities}")
    items = data.get("rules")
    if not isinstance(items, list) or not items:
        raise bad("rules", "must be a non-empty list")
    rules = []
    for i, item in enumerate(items):
        where = f"rules[{i}]" + (f" ({item.get('name')})" if isinstance(item, dict) and item.get("name") else "")
        if not isinstance(item, dict):
            raise bad(where, "must be an object")
        match = item.get("match", {})
        if not isinstance(match, dict) or set(match) - {"modality", "body_part"}:
            raise bad(where + ".match", "may hold only 'modality' and 'body_part', each a list of strings")
        prompt_set = item.get("prompt_set")
        if isinstance(prompt_set, str):
            if prompt_set != "model":
                from ..zeroshot import prompt_set_names

                if prompt_set not in prompt_set_names():
                    raise bad(where + ".prompt_set", f"unknown prompt set {prompt_set!r}; 'model' (the model's own) "
                                                     f"or one of {', '.join(prompt_set_names())}")
        elif not (isinstance(prompt_set, dict) and (prompt_set.get("classes") or prompt_set.get("binary_prompts"))):
            raise bad(where + ".prompt_set", "must be 'model', a prompt set name, or a set with 'classes'")
        findings = item.get("findings")
        if not isinstance(findings, dict) or not findings:
            raise bad(where + ".findings", "must map finding names to {threshold, priority}")
        parsed = []
        for name, spec in findings.items():
            fw = f"{where}.findings.{name}"
            if not isinstance(spec, dict) or "threshold" not in spec or "priority" not in spec:
                raise bad(fw, "needs a 'threshold' (0..1) and a 'priority'")
            t = spec["threshold"]
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1:
                raise bad(fw + ".threshold", f"{t!r} is not a probability between 0 and 1")
            if spec["priority"] not in priorities:
                raise bad(fw + ".priority", f"{spec['priority']!r} is not one of {priorities}")
            parsed.append(Finding(str(name), float(t), spec["priority"]))
        if isinstance(prompt_set, dict) or prompt_set != "model":
            known = _classes_of(prompt_set)
            unknown = [f.name for f in parsed if f.name not in known]
            if unknown:
                raise bad(where + ".findings", f"{', '.join(unknown)} not in the prompt set's classes ({', '.join(known)})")
        rules.append(Rule(str(item.get("name") or f"rule {i + 1}"), _names(match.get("modality"), where, "modality"),
                          _names(match.get("body_part"), where, "body_part"), prompt_set, parsed))
    return Rules(list(priorities), default, rules, source, str(data.get("about", "")))


def check_model_classes(rules: Rules, model_classes: list[str], model_name: str = "the model") -> None:
    """Refuse rules whose 'model' prompt set names findings the model's own prompt set lacks."""
    for rule in rules.rules:
        if rule.prompt_set == "model":
            unknown = [f.name for f in rule.findings if f.name not in model_classes]
            if unknown:
                raise RulesError(f"{rules.source}: rule {rule.name!r}: {', '.join(unknown)} not in {model_name}'s "
                                 f"prompt set ({', '.join(model_classes) or 'none'})")


def _names(value, where: str, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"{where}.match.{key}: must be a string or a list of strings")
    return tuple(v.upper() for v in value)


def _classes_of(prompt_set: str | dict) -> list[str]:
    from ..zeroshot import resolve_prompt_set

    spec = resolve_prompt_set(prompt_set) if isinstance(prompt_set, str) else prompt_set
    return list(spec.get("classes") or spec.get("binary_prompts") or {})
