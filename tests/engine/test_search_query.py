"""Search queries are centred on typical queries of the model's domain (HLIPModel.encode_query)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hlip_engine.model import create_model
from hlip_engine.model.clip import query_bank


@pytest.fixture(scope="module")
def model():
    m = create_model("hlip_tiny").eval()
    m.config["text"]["query_prefix"] = "This study shows: "
    return m


def _plain(model, texts):
    return model.encode_query(texts, centre=False)


def test_a_query_is_the_plain_query_minus_the_mean_of_its_domains_bank(model):
    with torch.no_grad():
        bank = query_bank("neuro")
        assert len(bank) >= 30 and "Subdural haematoma" in bank
        mean = _plain(model, bank).mean(0)
        want = F.normalize(_plain(model, ["acute infarct"]) - mean, dim=-1)
        got = model.encode_query(["acute infarct"])
        assert torch.allclose(got, want, atol=1e-6)
        assert not torch.allclose(got, _plain(model, ["acute infarct"]), atol=1e-3)


def test_centred_ranking_is_how_much_more_a_study_matches_the_query_than_typical_queries(model):
    torch.manual_seed(0)
    with torch.no_grad():
        studies = F.normalize(torch.randn(200, model.config["embed_dim"]), dim=-1)
        query = _plain(model, ["left frontal mass with surrounding oedema"])[0]
        typical = _plain(model, query_bank("neuro"))                     # [B, E]
        excess = studies @ query - (studies @ typical.T).mean(1)          # match minus mean match to the bank
        centred = studies @ model.encode_query(["left frontal mass with surrounding oedema"])[0]
        assert torch.equal(torch.argsort(centred, descending=True), torch.argsort(excess, descending=True))
        # a study that matches every typical query best (a hub) tops the plain ranking and not the centred one
        hub = F.normalize(typical.mean(0), dim=-1)
        both = torch.cat([studies, hub[None]])
        assert int((both @ _plain(model, ["acute haematoma"])[0]).argmax()) == len(studies)
        assert int((both @ model.encode_query(["acute haematoma"])[0]).argmax()) != len(studies)


def test_bank_mean_is_recomputed_after_the_text_weights_change():
    m = create_model("hlip_tiny").eval()
    with torch.no_grad():
        before = m.encode_query(["acute infarct"])
        assert torch.equal(before, m.encode_query(["acute infarct"]))  # cached, same answer
        m.text.proj.weight.mul_(1.5).add_(0.01)
        after = m.encode_query(["acute infarct"])
        want = F.normalize(_plain(m, ["acute infarct"]) - _plain(m, query_bank("neuro")).mean(0), dim=-1)
    assert torch.allclose(after, want, atol=1e-6)
    assert not torch.allclose(after, before, atol=1e-4)


def test_the_bank_follows_the_config_or_the_recipe():
    m = create_model("hlip_tiny").eval()
    assert m.query_bank_name() == "neuro"
    m.config["preprocess"] = {"recipe": "chest-ct"}
    assert m.query_bank_name() == "chest"
    m.config["text"]["query_bank"] = None
    with torch.no_grad():
        assert torch.equal(m.encode_query(["nodule"]), _plain(m, ["nodule"]))
    m.config["text"]["query_bank"] = "spine"
    with pytest.raises(ValueError, match=r"unknown query bank 'spine'.*known: neuro, chest"):
        m.encode_query(["disc herniation"])


def test_a_model_built_under_inference_mode_centres_its_queries_too():
    with torch.inference_mode():  # its tensors keep no version counter to key the cache on
        m = create_model("hlip_tiny").eval()
        got = m.encode_query(["acute infarct"])
        want = F.normalize(_plain(m, ["acute infarct"]) - _plain(m, query_bank("neuro")).mean(0), dim=-1)
        assert torch.allclose(got, want, atol=1e-6) and torch.equal(m.encode_query(["acute infarct"]), got)
