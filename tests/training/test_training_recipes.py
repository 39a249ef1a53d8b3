"""Recipes as data, the MAE start, the text towers (CXR-BERT, vocabularies) and open_clip's --lock-text."""
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

import hlip_engine.model
from hlip_engine.model import create_model, get_config
from hlip_engine.model.text import TextTower, minilm_folder, resolve_text_folder
from training.config import TrainConfig, parse_config
from training.inflate import resolve_init_2d
from training.model_setup import ContrastiveStep, build_model, text_is_frozen
from training.recipes import list_recipes, read_recipe, recipe_options

CONFIG_DIR = Path(hlip_engine.model.__file__).with_name("configs")


def test_every_recipe_names_its_source_and_holds_valid_options():
    assert set(list_recipes()) >= {"brain-mri", "head-ct", "ct-rate", "two-head-2026"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in list_recipes():
        recipe = read_recipe(name)
        assert recipe["source"] and recipe["official"] and recipe["notes"], name
        options = recipe_options(name)
        assert set(options) <= fields
        for key in ("lr", "warmup", "batch_size", "epochs", "wd", "beta1", "beta2", "eps", "num_scans", "arch",
                    "lock_text", "report_prefix", "init_2d"):
            assert key in options, f"{name}: {key} missing"
        width = get_config(options["arch"])["visual"]["width"]
        assert width in (768, 1024) and options["init_2d"] == "mae"  # ViT-B/L recipes start from MAE


def test_the_ct_rate_recipe_is_the_official_command_and_flags_override_it(tmp_path):
    cfg = parse_config(["--recipe", "ct-rate", "--data", "m.json", "--out", str(tmp_path), "--lr", "2e-5"])
    assert cfg.lr == 2e-5  # a flag wins
    assert (cfg.warmup, cfg.warmup_cap, cfg.batch_size, cfg.epochs, cfg.wd) == (377, 0.0, 16, 20, 0.2)
    assert (cfg.arch, cfg.text_model) == ("vit_base_singlescan_h2_token2744", "microsoft/BiomedVLP-CXR-BERT-specialized")
    assert cfg.lock_text and not cfg.lock_text_norms and cfg.grad_checkpointing
    assert (cfg.hu_window, cfg.geometry, cfg.num_scans, cfg.report_prefix) == ([-1150.0, 350.0], "pad-crop", 1, "")
    assert cfg.exclude_volumes == ["train_1267_a_4", "train_11755_a_3", "train_11755_a_4"]
    assert cfg.init_2d == "mae"
    off = parse_config(["--recipe", "ct-rate", "--data", "m.json", "--out", "o", "--init-2d", "none",
                        "--no-lock-text"])
    assert off.init_2d == "none" and not off.lock_text
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"recipe": "brain-mri", "epochs": 3}))
    cfg = parse_config(["--config", str(config_file), "--data", "m.json", "--out", "o"])
    assert (cfg.epochs, cfg.num_scans, cfg.warmup, cfg.report_prefix) == (3, 8, 10000, "This MRI study shows: ")
    with pytest.raises(SystemExit):
        parse_config(["--recipe", "no-such-recipe", "--data", "m.json", "--out", "o"])


def tiny_timm_vit(width: int = 64, depth: int = 4) -> dict:
    """A 2-D ViT state dict in timm's layout (as vit_base_patch16_224.mae's safetensors), tiny."""
    g = torch.Generator().manual_seed(3)
    sd = {"cls_token": torch.randn(1, 1, width, generator=g), "pos_embed": torch.randn(1, 17, width, generator=g),
          "patch_embed.proj.weight": torch.randn(width, 3, 8, 8, generator=g),
          "patch_embed.proj.bias": torch.randn(width, generator=g),
          "norm.weight": torch.randn(width, generator=g), "norm.bias": torch.randn(width, generator=g)}
    for i in range(depth):
        for name, shape in (("norm1", (width,)), ("norm2", (width,)), ("attn.qkv", (3 * width, width)),
                            ("attn.proj", (width, width)), ("mlp.fc1", (4 * width, width)),
                            ("mlp.fc2", (width, 4 * width))):
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(shape, generator=g)
            sd[f"blocks.{i}.{name}.bias"] = torch.randn(shape[0], generator=g)
    return sd


def fake_hub_cache(root, repo: str, tensors: dict):
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snap = folder / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(tensors, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_mae_start_from_the_hugging_face_cache_or_a_file_and_a_clear_error_when_missing(tmp_path):
    sd = tiny_timm_vit()
    cached = fake_hub_cache(tmp_path / "hub", "timm/vit_base_patch16_224.mae", sd)
    assert resolve_init_2d("mae", width=768, cache_dir=tmp_path / "hub") == cached
    assert resolve_init_2d("vit_base_patch16_224.mae", width=768, cache_dir=tmp_path / "hub") == cached
    with pytest.raises(FileNotFoundError) as err:
        resolve_init_2d("mae", width=1024, cache_dir=tmp_path / "hub")
    message = str(err.value)
    assert "timm/vit_large_patch16_224.mae" in message and "model.safetensors" in message
    assert "huggingface.co/timm/vit_large_patch16_224.mae" in message and "--init-2d none" in message
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        resolve_init_2d(str(tmp_path / "missing.safetensors"), width=768)
    # the tiny file inflates into the tiny 3-D tower: blocks copied, the RGB kernel summed and spread over depth
    cfg = SimpleNamespace(init="", arch="hlip_tiny", text_model="", init_2d=str(cached), patch_dropout=0.0,
                          lock_text=False, grad_checkpointing=False, objective="single")
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda m: None)
    torch.testing.assert_close(model.visual.blocks[2].mlp.fc1.weight, sd["blocks.2.mlp.fc1.weight"])
    torch.testing.assert_close(model.visual.norm.weight, sd["norm.weight"])
    kernel = model.visual.patch_embed.proj.weight  # [64, 1, 4, 8, 8]
    torch.testing.assert_close(kernel.sum(2)[:, 0], sd["patch_embed.proj.weight"].sum(1))
    torch.testing.assert_close(kernel[:, :, 0], kernel[:, :, 3])
    logs = []
    torch.manual_seed(0)
    scratch = build_model(SimpleNamespace(**{**vars(cfg), "init_2d": "none"}), log=logs.append)
    assert not torch.allclose(scratch.visual.blocks[2].mlp.fc1.weight, sd["blocks.2.mlp.fc1.weight"])
    assert any("random initialisation" in m for m in logs)


def fake_cxr_bert(folder, vocab_size: int = 30522):
    """A tiny model laid out as microsoft/BiomedVLP-CXR-BERT-specialized: custom model type, BERT under 'bert.'."""
    from transformers import BertConfig, BertModel

    config = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
    torch.manual_seed(5)
    bert = BertModel(BertConfig(**config), add_pooling_layer=False)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "cxr-bert",
                                                    "architectures": ["CXRBertModel"], "projection_size": 16,
                                                    "auto_map": {"AutoModel": "modeling_cxrbert.CXRBertModel"}}))
    tensors = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    tensors["cls_projection_head.dense_to_hidden.weight"] = torch.zeros(16, 32)
    save_file(tensors, str(folder / "model.safetensors"))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_folder() / f, folder / f)
    return bert


def test_cxr_bert_loads_as_a_plain_bert_with_its_own_weights_and_tokenizer(tmp_path):
    bert = fake_cxr_bert(tmp_path / "cxr")
    tower = TextTower.build(str(tmp_path / "cxr"), 16, 512)
    assert type(tower.transformer).__name__ == "BertModel"  # no remote code ran
    for k, v in bert.state_dict().items():
        torch.testing.assert_close(tower.transformer.state_dict()[k], v)
    assert tower.tokenizer.vocab_size == tower.transformer.config.vocab_size
    assert tower.encode(["Right upper lobe nodule."]).shape == (1, 16)
    shell = TextTower.build(str(tmp_path / "cxr"), 16, 512, pretrained=False)  # config only (official checkpoints)
    assert shell.transformer.config.hidden_size == 32 and shell.transformer.config.model_type == "bert"


def test_tokenizer_and_embeddings_share_a_vocabulary_in_every_shipped_config():
    checked_real = 0
    for path in sorted(CONFIG_DIR.glob("*.json")):
        text = json.loads(path.read_text()).get("text") or {}
        model, tokenizer = text.get("model"), text.get("tokenizer", text.get("model"))
        # token ids of one vocabulary must never feed another's embeddings: one model gives both
        assert tokenizer == model, f"{path.name}: tokenizer {tokenizer!r} with the weights of {model!r}"
        folder = resolve_text_folder(model)
        if folder is not None and (folder / "config.json").is_file():
            tower = TextTower.build(model, 8, text.get("context_length", 256))
            ids = tower.tokenize(["left basal ganglia haemorrhage, no midline shift"])["input_ids"]
            assert len(tower.tokenizer) <= tower.transformer.config.vocab_size
            assert int(ids.max()) < tower.transformer.get_input_embeddings().num_embeddings
            checked_real += 1
    assert checked_real >= 1  # the MiniLM configs were checked against the real tower


def test_lock_text_follows_open_clip_and_lock_text_norms_is_the_stiff_lock():
    cfg = SimpleNamespace(init="", arch="hlip_tiny", text_model="", init_2d="", patch_dropout=0.0, lock_text=True,
                          lock_text_unlocked_layers=0, lock_text_norms=False, grad_checkpointing=False,
                          objective="single")
    model = build_model(cfg, log=lambda m: None)
    trainable = {n for n, p in model.text.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("LayerNorm" in n for n in trainable)
    assert not model.text.transformer.embeddings.word_embeddings.weight.requires_grad
    assert model.text.proj.weight.requires_grad and not text_is_frozen(model)
    step = ContrastiveStep(model, torch.nn.Identity()).train()
    assert model.text.transformer.training  # dropout active, as open_clip's tower in train mode
    stiff = build_model(SimpleNamespace(**{**vars(cfg), "lock_text_norms": True}), log=lambda m: None)
    assert text_is_frozen(stiff)
    with pytest.raises(SystemExit):
        parse_config(["--synthetic", "--out", "o", "--lock-text-norms"])
    assert step is not None


def test_single_scan_configs_pair_cxr_bert_weights_with_its_tokenizer():
    for name in ("vit_base_singlescan_h2_token2744", "vit_base_slice_scan_dualdinotxt2744"):
        text = get_config(name)["text"]
        assert text["model"] == text["tokenizer"] == "microsoft/BiomedVLP-CXR-BERT-specialized"
        assert text["context_length"] == 512
    with pytest.raises(FileNotFoundError, match="not on this machine"):
        create_model("vit_base_singlescan_h2_token2744")  # not installed here: said, not silently swapped


def test_a_recipe_without_its_mae_file_stops_before_the_run_folder_is_written(tmp_path, capsys, monkeypatch):
    from training.pretrain import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "m.json").write_text(json.dumps({"S": {"series": {"A": {}}, "report": ["x"]}}))
    assert main(["--recipe", "ct-rate", "--data", str(tmp_path / "m.json"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "timm/vit_base_patch16_224.mae" in err and "--init-2d none" in err
    assert not (tmp_path / "run").exists()
