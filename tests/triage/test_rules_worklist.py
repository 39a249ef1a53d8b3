"""Rules as data (the shipped demo rules, verdicts, clear errors), the worklist's order and states, and the
spool's bookkeeping (limit, bad UIDs, recovery after a kill)."""
from __future__ import annotations

import copy
import json

import pytest

from hlip_engine.triage.rules import DEMO_RULES, RulesError, check_model_classes, load_rules, parse_rules
from hlip_engine.triage.spool import Spool, SpoolFull
from hlip_engine.triage.worklist import Worklist


def demo() -> dict:
    return json.loads(DEMO_RULES.read_text())


def test_demo_rules_rank_a_head_ct_haemorrhage_stat():
    rules = load_rules()
    assert rules.priorities[0] == "STAT" and rules.default_priority == "ROUTINE"
    rule = rules.rule_for("CT", {"HEAD"})
    assert rule.name == "head CT" and rules.rule_for("CT", set()) is rule  # no BodyPartExamined: still a head
    assert rules.rule_for("CT", {"CHEST"}) is None and rules.rule_for("US", {"HEAD"}) is None
    probs = {"normal": 0.1, "haemorrhage": 0.62, "infarct": 0.55, "tumour": 0.2, "atrophy": 0.3}
    v = rules.judge(rule, probs)
    assert (v.priority, v.finding, v.score, v.raised) == ("STAT", "haemorrhage", 0.62, ["haemorrhage", "infarct"])
    v = rules.judge(rule, probs | {"haemorrhage": 0.49})  # just below its threshold
    assert (v.priority, v.finding) == ("URGENT", "infarct")
    v = rules.judge(rule, {"normal": 0.9, "haemorrhage": 0.04, "infarct": 0.03, "tumour": 0.02})
    assert (v.priority, v.finding, v.score) == ("ROUTINE", "haemorrhage", 0.04)
    assert rules.judge(None, {}).priority == "ROUTINE"
    check_model_classes(rules, ["normal", "tumour", "infarct", "haemorrhage", "atrophy"])
    with pytest.raises(RulesError, match="haemorrhage"):
        check_model_classes(rules, ["normal", "tumour", "infarct", "atrophy"], "hlip-demo-5")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "not a triage rules file"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d["rules"][0]["findings"]["haemorrhage"].update(threshold=1.5), r"findings.haemorrhage.threshold"),
    (lambda d: d["rules"][0]["findings"]["haemorrhage"].update(priority="ASAP"), "'ASAP' is not one of"),
    (lambda d: d["rules"][1].pop("findings"), r"rules\[1\] \(brain MR\).findings"),
    (lambda d: d["rules"][0].update(prompt_set="no-such-set"), "unknown prompt set 'no-such-set'"),
    (lambda d: d["rules"][0].update(prompt_set="head-ct-hemorrhage"), "haemorrhage, infarct, tumour not in"),
    (lambda d: d["rules"][0]["match"].update(scanner="x"), "may hold only"),
    (lambda d: d.update(default_priority="LOW"), "default_priority"),
])
def test_rules_errors_say_where_and_what(edit, message):
    data = copy.deepcopy(demo())
    edit(data)
    with pytest.raises(RulesError, match=message):
        parse_rules(data, "site.json")


def test_a_named_prompt_set_and_file_errors(tmp_path):
    data = demo()
    data["rules"][0].update(prompt_set="head-ct-hemorrhage",
                            findings={"Any hemorrhage": {"threshold": 0.4, "priority": "STAT"}})
    rules = parse_rules(data)
    v = rules.judge(rules.rules[0], {"Any hemorrhage": 0.41, "Subdural": 0.9})
    assert (v.priority, v.finding) == ("STAT", "Any hemorrhage")
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(RulesError, match="not valid JSON"):
        load_rules(bad)
    with pytest.raises(RulesError, match="no such rules file"):
        load_rules(tmp_path / "missing.json")


def test_worklist_orders_by_priority_then_arrival_and_tracks_states(tmp_path):
    wl = Worklist(tmp_path / "worklist.sqlite")
    for i, uid in enumerate(["1.1", "1.2", "1.3", "1.4"]):
        wl.received(uid, f"/s/{uid}", at=100.0 + i)
    verdict = dict(finding="x", score=0.9, rule="r", probabilities={"x": 0.9}, modality="CT", description="",
                   series=1, instances=10, fingerprint="f")
    wl.scoring("1.2", "/s/1.2")
    wl.done("1.2", priority="ROUTINE", rank=2, **verdict)
    wl.done("1.3", priority="STAT", rank=0, **verdict)
    wl.done("1.4", priority="STAT", rank=0, **verdict)
    wl.failed("1.1", "no scan could be loaded")
    rows = wl.rows()
    assert [r["study_uid"] for r in rows] == ["1.3", "1.4", "1.2", "1.1"]
    assert rows[0]["probabilities"] == {"x": 0.9} and rows[-1]["reason"] == "no scan could be loaded"
    # more instances of a done study: back to received, one row, same arrival, then unchanged keeps the verdict
    wl.received("1.3", "/s/1.3", at=200.0)
    row = wl.get("1.3")
    assert row["status"] == "received" and row["arrived_at"] == 102.0 and len(wl.rows()) == 4
    wl.done("1.3", priority="", rank=0, rescored=False, **verdict)
    assert wl.get("1.3")["priority"] == "STAT" and wl.get("1.3")["scored"] == 1
    reader = Worklist(tmp_path / "worklist.sqlite", readonly=True)
    assert [r["study_uid"] for r in reader.rows("done")] == ["1.3", "1.4", "1.2"]
    reader.close()
    wl.close()
    with pytest.raises(FileNotFoundError, match="no worklist"):
        Worklist(tmp_path / "none.sqlite", readonly=True)


def test_spool_limit_bad_uids_and_recovery(tmp_path):
    sp = Spool(tmp_path, max_bytes=3000)
    assert sp.store("1.2.3", "1.2.3.1", lambda f: f.write(b"a" * 1000), 1000) is True
    assert sp.store("1.2.3", "1.2.3.2", lambda f: f.write(b"b" * 1000), 1000) is False
    sp.store("1.2.3", "1.2.3.2", lambda f: f.write(b"c" * 1000), 1000)  # the same instance again: replaced
    assert sp.bytes == 2000 and sp.counts["1.2.3"] == 2
    with pytest.raises(SpoolFull):
        sp.store("1.2.4", "1.2.4.1", lambda f: f.write(b"d" * 1500), 1500)
    for bad in ("../x", "1.2.a", "", "1." * 40):
        with pytest.raises(ValueError, match="not a valid UID"):
            sp.store(bad, "1.2.9", lambda f: f.write(b"x"), 1)
    assert sp.bytes == 2000 and not list(sp.partial.iterdir())
    (sp.partial / "half.dcm").write_bytes(b"half")  # a kill while writing
    claimed = sp.claim("1.2.3")
    sp.store("1.2.3", "1.2.3.3", lambda f: f.write(b"e" * 10), 10)  # arrives after the claim: a new delivery

    again = Spool(tmp_path, max_bytes=3000)  # a restart
    assert not list(again.partial.iterdir()) and set(again.last) == {"1.2.3"} and again.counts["1.2.3"] == 1
    assert again.claimed() == [claimed] and again.bytes == 2010
    uid, folder = again.settle(claimed)
    assert uid == "1.2.3" and sorted(p.name for p in folder.iterdir()) == ["1.2.3.1.dcm", "1.2.3.2.dcm"]
    assert (folder / "1.2.3.2.dcm").read_bytes() == b"c" * 1000
    assert again.pending() == ["1.2.3"] and again.bytes == 10
    again.finish("1.2.3")
    assert again.pending() == []
