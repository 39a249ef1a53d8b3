"""Optimiser groups, the learning-rate schedule, 2-D -> 3-D inflation, and the command line / config files."""
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.config import TrainConfig, build_parser, parse_config
from training.optim import CosineSchedule, create_optimizer, param_groups

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    from hlip_engine.model import create_model

    torch.manual_seed(0)
    return create_model("hlip_tiny")


def test_no_weight_decay_on_biases_norms_scales_and_tokens(tiny):
    tiny.lock_text()
    decay, no_decay = param_groups([tiny], weight_decay=0.2)
    names = {id(p): n for n, p in tiny.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert {"logit_scale", "visual.cls_token", "visual.norm.weight", "visual.blocks.0.attn.qkv.bias"} <= kept
    assert {"visual.blocks.0.attn.qkv.weight", "visual.patch_embed.proj.weight", "text.proj.weight"} <= decayed
    assert not any(n.startswith("text.transformer.") for n in decayed | kept)  # locked: not optimised
    opt = create_optimizer([tiny], lr=1e-3, weight_decay=0.2)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6


def test_cosine_schedule_warms_up_then_decays():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = CosineSchedule(opt, lr=1.0, warmup=4, total=20, min_ratio=0.1)
    lrs = [s.lr_at(i) for i in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert s.lr_at(20) == pytest.approx(0.1)
    assert s.lr_at(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    s.apply(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[5]) and s.state_dict()["step"] == 5


def test_unlocked_text_layers_get_their_own_learning_rate_scale(tiny):
    tiny.lock_text(unlocked_layers=1)
    names = {id(p): n for n, p in tiny.named_parameters()}
    opt = create_optimizer([tiny], lr=1e-3, weight_decay=0.2, text_lr_scale=0.1)
    scaled = [g for g in opt.param_groups if g.get("lr_scale", 1.0) != 1.0]
    text = {names[id(p)] for g in scaled for p in g["params"]}
    assert text and all(n.startswith("text.transformer.encoder.layer.5.") for n in text)
    assert "text.proj.weight" not in text  # the new projection learns at the full rate
    CosineSchedule(opt, lr=1e-3, warmup=1, total=10).apply(1)
    full = {g["lr"] for g in opt.param_groups if "lr_scale" not in g}
    assert len(full) == 1 and [g["lr"] for g in scaled] == pytest.approx([full.pop() * 0.1] * len(scaled))
    tiny.lock_text()


def test_inflating_a_2d_vit_by_averaging(tiny, tmp_path):
    from training.inflate import inflate_into

    visual = tiny.visual
    g = torch.Generator().manual_seed(1)
    sd2d = {"patch_embed.proj.weight": torch.randn(64, 3, 8, 8, generator=g),  # RGB kernel
            "patch_embed.proj.bias": torch.randn(64, generator=g),
            "pos_embed": torch.randn(1, 17, 64, generator=g), "cls_token": torch.randn(1, 1, 64, generator=g),
            "head.weight": torch.randn(10, 64, generator=g)}
    for k, v in visual.state_dict().items():
        if k.startswith(("blocks.", "norm.")):
            sd2d[k] = torch.randn(v.shape, generator=g)
    torch.save({"model": {f"module.{k}": v for k, v in sd2d.items()}}, tmp_path / "mae.pth")
    report = inflate_into(visual, tmp_path / "mae.pth")
    assert "blocks.3.mlp.fc2.weight" in report["loaded"] and "cls_token" in report["loaded"]
    assert any(s.startswith("pos_embed") for s in report["skipped"])
    torch.testing.assert_close(visual.blocks[1].attn.qkv.weight, sd2d["blocks.1.attn.qkv.weight"])
    # a grey image repeated over the patch depth embeds as the 2-D model embedded it (RGB = grey, grey, grey)
    image = torch.randn(1, 1, 32, 32, generator=g)
    volume = image[:, :, None].repeat(1, 1, 4, 1, 1)  # [1, 1, 4, 32, 32]: one patch deep
    with torch.no_grad():
        three_d = visual.patch_embed.proj(volume)[:, :, 0]
        two_d = F.conv2d(image.repeat(1, 3, 1, 1), sd2d["patch_embed.proj.weight"], sd2d["patch_embed.proj.bias"],
                         stride=8)
    torch.testing.assert_close(three_d, two_d, atol=1e-4, rtol=1e-4)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no weight matched"):
        inflate_into(visual, tmp_path / "other.pth")


def test_config_file_is_overridden_by_flags(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lr": 1e-4, "batch-size": 3, "lock_text": True, "out": "from_file"}))
    cfg = parse_config(["--config", str(path), "--synthetic", "--batch-size", "5"])
    assert (cfg.lr, cfg.batch_size, cfg.lock_text, cfg.out) == (1e-4, 5, True, "from_file")
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("lr: 0.002\nnum_scans: 4\nrecall_k: [1, 3]\n")
    cfg = parse_config(["--config", str(yaml_path), "--synthetic", "--out", "o"])
    assert (cfg.lr, cfg.num_scans, cfg.recall_k) == (0.002, 4, [1, 3])
    path.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="unknown options \\['learning_rate'\\]"):
        parse_config(["--config", str(path), "--synthetic", "--out", "o"])
    # a saved run config is a valid config file
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(TrainConfig(synthetic=True, out="x", steps=7).to_dict()))
    assert parse_config(["--config", str(saved)]).steps == 7


def test_help_documents_every_option():
    text = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text
    result = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "training.pretrain", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--lock-text-unlocked-layers" in result.stdout
