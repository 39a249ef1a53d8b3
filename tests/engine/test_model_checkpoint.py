"""Checkpoints: our format round trip, the official 2025 .pt and 2026 Hugging Face layouts, shape-based
architecture inference, and the messages a person sees when a checkpoint does not fit."""
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hlip_engine.model import create_model, get_config, load_model
from hlip_engine.model.checkpoint import to_hlip_keys
from hlip_engine.model.clip import HLIPModel
from hlip_engine.model.factory import infer_arch
from hlip_engine.model.text import TextTower, minilm_folder

torch.set_num_threads(2)
OFFICIAL_KEYS = (Path(__file__).resolve().parents[3] / "shared" / "data"
                 / "official_checkpoint_keys_vit_base_h2_token1176_minilm.json")
TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 1, "intermediate_size": 64, "max_position_embeddings": 64,
             "type_vocab_size": 2, "pad_token_id": 0}


def official_name(key: str) -> str:
    """Our key -> the open_clip key the official code writes (written out here independently)."""
    if key == "visual.scan_posemb":
        return "visual.trunk.sequential_posemb"
    if key == "visual.proj.weight":
        return "visual.head.proj.weight"
    if key.startswith("visual."):
        return "visual.trunk." + key[len("visual."):]
    return key


def random_official_state(arch: str) -> dict:
    """A random checkpoint in the official key layout for ``arch``, with a small BERT text tower."""
    cfg = get_config(arch)
    torch.manual_seed(0)
    text = TextTower.build("tiny-bert", cfg["embed_dim"], 64, pretrained=False, hf_config=TINY_BERT)
    shapes = HLIPModel(cfg, text).state_dict()
    state = {official_name(k): torch.randn(v.shape) * 0.05 for k, v in shapes.items()}
    state["logit_scale"] = torch.tensor(3.2)
    state["text.transformer.embeddings.position_ids"] = torch.arange(64)[None]  # older transformers wrote it
    return state


def copy_tokenizer(folder: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_folder() / name, folder / name)


def embeddings(model, x, texts=("glioma", "no acute abnormality")):
    with torch.no_grad():
        return model.encode_image(x), model.encode_text(list(texts))


def test_our_format_round_trip(tmp_path):
    model = create_model("hlip_tiny").eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        model.visual.cls_token.normal_()
    x = torch.randn(2, 3, 1, 16, 32, 32)
    img, txt = embeddings(model, x)
    path = model.save(tmp_path / "m.safetensors")
    model.save(path)  # overwriting is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    loaded = load_model(path, device="cpu")
    assert not loaded.training and loaded.config["name"] == "hlip_tiny"
    assert loaded.config["preprocess"]["recipe"] == "brain-mri"
    img2, txt2 = embeddings(loaded, x)
    torch.testing.assert_close(img2, img, atol=0, rtol=0)
    torch.testing.assert_close(txt2, txt, atol=0, rtol=0)
    assert float(loaded.logit_scale.detach()) == pytest.approx(3.0)
    assert img2.shape == (2, 64) and torch.allclose(img2.norm(dim=-1), torch.ones(2))


def test_official_2025_pt_layout_loads_with_inferred_architecture(tmp_path):
    state = random_official_state("hlip_tiny")
    path = tmp_path / "hlip_tiny_epoch_3.pt"
    torch.save({"epoch": 3, "name": "run-hlip_tiny", "state_dict": {f"module.{k}": v for k, v in state.items()}},
               path)
    model = load_model(path, text_model="all-MiniLM-L6-v2")  # tokenizer from the packaged MiniLM
    assert model.config["name"] == "hlip_tiny" and model.config["source"]["kind"] == "official-2025"
    ours = model.state_dict()
    for key, value in state.items():
        if "position_ids" not in key:
            torch.testing.assert_close(ours[to_hlip_keys({key: value}).popitem()[0]], value, atol=0, rtol=0)
    img, txt = embeddings(model, torch.randn(1, 2, 1, 16, 32, 32))
    assert img.shape == (1, 64) and txt.shape == (2, 64)
    assert float(model.logit_scale.detach()) == pytest.approx(3.2)


def test_official_key_list_maps_one_to_one_onto_vit_base():
    """Every key of a real official checkpoint (ViT-B token1176 + MiniLM) lands on our module, same shape."""
    official = json.loads(OFFICIAL_KEYS.read_text())
    cfg = get_config("vit_base_multiscan_h2_token1176")
    hf = json.loads((minilm_folder() / "config.json").read_text())
    with torch.device("meta"):
        text = TextTower.build("all-MiniLM-L6-v2", cfg["embed_dim"], 256, pretrained=False, hf_config=hf)
        ours = {k: tuple(v.shape) for k, v in HLIPModel(cfg, text).state_dict().items()}
    mapped = to_hlip_keys({k: torch.empty(v, device="meta") for k, v in official.items()})
    assert {k: tuple(v.shape) for k, v in mapped.items()} == ours
    assert len(mapped) == len(official) == 255
    with pytest.warns(UserWarning, match="block layouts differ"):
        assert infer_arch(mapped) == "vit_base_multiscan_h2_token1176"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert infer_arch(mapped, ["vit_base_brainmri_h3_token1176"]) == "vit_base_multiscan_h3_token1176"
        assert infer_arch(mapped, ["vit_base_headct_h2_token1176.pt"]) == "vit_base_multiscan_h2_token1176"


def test_official_2026_hugging_face_folder(tmp_path):
    state = random_official_state("hlip_tiny_dinotxt")
    state["logit_bias"] = torch.tensor(2.0)
    state.pop("text.transformer.embeddings.position_ids")
    folder = tmp_path / "clip-hlip_tiny-dinotxt"
    (folder / "hlip" / "model_configs").mkdir(parents=True)
    (folder / "hlip" / "model_configs" / "clip_hlip_tiny_dinotxt.json").write_text("{}")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    copy_tokenizer(folder)
    model = load_model(folder)  # tokenizer from the folder itself
    assert model.config["name"] == "hlip_tiny_dinotxt" and float(model.logit_bias.detach()) == pytest.approx(2.0)
    x = torch.randn(2, 2, 1, 16, 32, 32)
    with torch.no_grad():
        both = model.encode_image(x, all_outputs=True)
        assert both.shape == (2, 2, 64)
        torch.testing.assert_close(model.encode_image(x), both[:, 0])
        text = model.encode_text(["meningioma"])
    # the pytorch_model.bin fallback gives the same model
    other = tmp_path / "bin-folder"
    other.mkdir()
    torch.save(state, other / "pytorch_model.bin")
    copy_tokenizer(other)
    again = load_model(other, arch="hlip_tiny_dinotxt")
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x, all_outputs=True), both, atol=0, rtol=0)
        torch.testing.assert_close(again.encode_text(["meningioma"]), text, atol=0, rtol=0)


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = random_official_state("hlip_tiny")
    state.pop("visual.trunk.blocks.3.mlp.fc2.bias")
    state["visual.trunk.blocks.9.attn.qkv.weight"] = torch.zeros(3, 3)
    state["visual.trunk.norm.weight"] = torch.zeros(65)
    path = tmp_path / "broken.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError) as err:
        load_model(path, arch="hlip_tiny", text_model="all-MiniLM-L6-v2")
    msg = str(err.value)
    assert "does not fit architecture 'hlip_tiny'" in msg
    assert "missing (1): visual.blocks.3.mlp.fc2.bias" in msg
    assert "unexpected (1): visual.blocks.9.attn.qkv.weight" in msg
    assert "visual.norm.weight: checkpoint [65] vs model [64]" in msg
    assert "the checkpoint looks like: ViT width 64, depth 10" in msg


def test_clear_errors_for_wrong_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'vit_huge'"):
        create_model("vit_huge")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, other)
    with pytest.raises(ValueError, match="not an HLIP checkpoint.*conv1.weight"):
        load_model(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_model(junk)
    odd = get_config("hlip_tiny")
    odd["visual"]["patch_size"] = [2, 8, 8]
    state = random_official_state(odd)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="no registered architecture has these shapes: .*patch 2x8x8"):
        load_model(tmp_path / "odd.pt")


def test_missing_tokenizer_says_what_to_put_where(tmp_path):
    state = random_official_state("hlip_tiny")
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    arch = get_config("hlip_tiny")
    arch["text"]["model"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"  # not on this machine
    model = load_model(folder, arch=arch)  # images still work without a tokenizer
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 1, 1, 16, 32, 32)).shape == (1, 64)
    with pytest.raises(FileNotFoundError, match="no tokenizer for text model .*BiomedBERT.*vocab.txt.*text_model=<folder>"):
        model.encode_text(["glioma"])


def test_locked_pretrained_text_tower_is_referenced_not_copied(tmp_path):
    """save(text_weights=False): the file holds no text transformer, load_model restores it and checks it."""
    import torch

    from hlip_engine.model import create_model, load_model

    torch.manual_seed(0)
    model = create_model("hlip_tiny").eval()
    full, small = model.save(tmp_path / "full.safetensors"), model.save(tmp_path / "small.safetensors",
                                                                     text_weights=False)
    assert small.stat().st_size < full.stat().st_size / 4
    back = load_model(small, device="cpu")
    x = torch.randn(1, 2, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back.encode_image(x), model.encode_image(x), atol=1e-6)
        assert torch.allclose(back.encode_text(["left frontal mass"]), model.encode_text(["left frontal mass"]),
                              atol=1e-6)
    # a tower whose last layer training changed: that layer's tensors are stored, the rest referenced
    with torch.no_grad():
        for p in model.text.transformer.encoder.layer[-1].parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned = model.save(tmp_path / "tuned.safetensors", text_weights=False)
    from safetensors import safe_open

    with safe_open(str(tuned), "pt") as f:
        stored = {k for k in f.keys() if k.startswith("text.transformer.")}
    last = {f"text.transformer.{k}" for k, _ in model.text.transformer.named_parameters() if ".layer.5." in k}
    assert stored == last and small.stat().st_size < tuned.stat().st_size < full.stat().st_size / 2
    back = load_model(tuned, device="cpu")
    with torch.no_grad():
        assert torch.allclose(back.encode_text(["left frontal mass"]), model.encode_text(["left frontal mass"]),
                              atol=1e-6)
    # nothing shared with the pretrained tower: every text tensor is written
    with torch.no_grad():
        for p in model.text.transformer.parameters():
            p.add_(0.01)
    changed = model.save(tmp_path / "changed.safetensors", text_weights=False)
    assert changed.stat().st_size > full.stat().st_size * 0.9


def test_search_queries_get_the_training_report_prefix_and_it_survives_saving(tmp_path):
    import torch

    from hlip_engine.model import create_model, load_model

    model = create_model("hlip_tiny").eval()
    model.config["text"]["query_prefix"] = "This study shows: "
    back = load_model(model.save(tmp_path / "m.safetensors"), device="cpu")
    with torch.no_grad():
        query = back.encode_query(["  left frontal mass "], centre=False)
        assert torch.allclose(query, model.encode_text(["This study shows: left frontal mass"]), atol=1e-6)
        assert not torch.allclose(query, model.encode_text(["left frontal mass"]), atol=1e-3)
