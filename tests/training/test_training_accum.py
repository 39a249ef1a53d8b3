"""Gradient accumulation as open_clip's accum_freq, and the 2026 two-head objective.

k micro-batches of b studies must give the gradient of ONE contrastive loss over the k x b studies (every
study a negative for every report of the step), not the mean of k small losses."""
import contextlib

import pytest
import torch

from hlip_engine.model import create_model
from training.loss import ClipLoss
from training.model_setup import ContrastiveStep, accumulated_backward

REPORTS = [f"Finding number {i} in the {side} lobe." for i, side in enumerate(["left", "right"] * 4)]


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def run_full(step, images, reports):
    step.zero_grad(set_to_none=True)
    step(images, reports).backward()
    return grads(step)


def run_accumulated(step, images, reports, k):
    step.zero_grad(set_to_none=True)
    b = images.shape[0] // k
    micro = [(images[i * b:(i + 1) * b], reports[i * b:(i + 1) * b]) for i in range(k)]
    accumulated_backward(step, micro, autocast=contextlib.nullcontext,
                         scaler=torch.amp.GradScaler("cpu", enabled=False))
    return grads(step)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_gradient_of_one_batch_of_k_times_b(images, k):
    torch.manual_seed(0)
    model = create_model("hlip_tiny")
    model.text.lock(1)  # the last text layer trains too: its gradient goes through the cached features
    step = ContrastiveStep(model, ClipLoss()).eval()  # eval: no dropout, so both runs see one function
    full = run_full(step, images, REPORTS)
    acc = run_accumulated(step, images, REPORTS, k)
    assert "model.logit_scale" in full and any(n.startswith("model.text.transformer.") for n in full)
    assert_same(full, acc)
    # the old way (mean of k per-micro-batch losses: fewer negatives) is a different gradient
    step.zero_grad(set_to_none=True)
    b = 8 // k
    for i in range(k):
        (step(images[i * b:(i + 1) * b], REPORTS[i * b:(i + 1) * b]) / k).backward()
    old = grads(step)
    assert not torch.allclose(old["model.visual.proj.weight"], full["model.visual.proj.weight"], atol=1e-5)


def test_dropout_draws_the_same_masks_when_features_are_recomputed(images):
    """In train mode (patch dropout, BERT dropout) the recomputed features are the cached ones."""
    torch.manual_seed(0)
    model = create_model("hlip_tiny")
    model.visual.cfg.patch_dropout = 0.5
    step = ContrastiveStep(model, ClipLoss()).train()
    torch.manual_seed(1)
    cached = step(images[:4], REPORTS[:4], mode="features")
    torch.manual_seed(1)
    again = step.features(images[:4], REPORTS[:4])
    torch.testing.assert_close(again["image"], cached["image"])
    torch.manual_seed(2)
    other = step.features(images[:4], REPORTS[:4])
    assert not torch.allclose(other["image"], cached["image"])  # (so the check above can fail)


def test_two_head_objective_matches_sentences_with_output_0_and_reports_with_output_1(images):
    torch.manual_seed(0)
    model = create_model("hlip_tiny_dinotxt")
    model.text.lock(0, freeze_layer_norm=True)
    loss = ClipLoss()
    step = ContrastiveStep(model, loss, objective="two-head").eval()
    with torch.no_grad():
        model.logit_bias.fill_(1.5)  # another scale than logit_scale's, so swapping them would show
    pairs = [(f"This study shows: {r} Second sentence {i}.", f"This study shows: {r}") for i, r in enumerate(REPORTS)]
    value = step(images, pairs)
    with torch.no_grad():
        out = model.encode_image(images, all_outputs=True)  # [B, 2, E]
        sentences = model.encode_text([p[1] for p in pairs])
        wholes = model.encode_text([p[0] for p in pairs])
        want = (loss(out[:, 0], sentences, model.logit_scale) + loss(out[:, 1], wholes, model.logit_bias)) / 2
        swapped = (loss(out[:, 0], wholes, model.logit_scale) + loss(out[:, 1], sentences, model.logit_bias)) / 2
    torch.testing.assert_close(value.detach(), want)
    assert abs(float(swapped) - float(want)) > 1e-4
    full = run_full(step, images, pairs)
    assert full["model.logit_bias"].abs() > 0 and full["model.logit_scale"].abs() > 0  # both scales learn
    assert_same(full, run_accumulated(step, images, pairs, 2))
    with torch.no_grad():
        model.logit_bias.fill_(9.0)
    step.clamp_logit_scale(100.0)
    assert float(model.logit_bias.detach()) == pytest.approx(float(torch.tensor(100.0).log()))


def test_two_head_needs_two_outputs():
    from types import SimpleNamespace

    from training.model_setup import resolve_objective

    tiny, dual = create_model("hlip_tiny"), create_model("hlip_tiny_dinotxt")
    assert resolve_objective(SimpleNamespace(objective="auto"), tiny) == "single"
    assert resolve_objective(SimpleNamespace(objective="auto"), dual) == "two-head"
    with pytest.raises(ValueError, match="two outputs"):
        resolve_objective(SimpleNamespace(objective="two-head"), tiny)


def test_two_head_run_with_accumulation_and_flips_through_the_trainer(tmp_path):
    """training.pretrain end to end on a small manifest: two heads, both scales learnt, 2 x 4 accumulated,
    --flip-lr, an empty report prefix; the checkpoint holds the trained logit_bias."""
    import json

    from training.config import parse_config
    from training.pretrain import train

    torch.set_num_threads(1)
    manifest = {}
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        for name in ("AX", "SAG"):
            (tmp_path / f"S{i}" / name).mkdir(parents=True)
            torch.save((torch.rand(16, 32, 32, generator=g) * 255).to(torch.uint8), tmp_path / f"S{i}" / name / "img.pt")
        manifest[f"S{i}"] = {"series": {"AX": {"view": "axial"}, "SAG": {"view": "sagittal"}},
                             "report": [f"Lesion {i} on the left.", f"Finding {i} in the right lobe."]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    cfg = parse_config(["--arch", "hlip_tiny_dinotxt", "--data", str(tmp_path / "manifest.json"), "--steps", "2",
                        "--batch-size", "4", "--accum-steps", "2", "--num-scans", "2", "--flip-lr", "0.5",
                        "--report-prefix", "", "--lr", "1e-3", "--warmup", "1", "--lock-text", "--lock-text-norms",
                        "--workers", "0", "--tensorboard", "off", "--out", str(out)])
    assert cfg.objective == "auto" and cfg.report_prefix == ""
    before = create_model("hlip_tiny_dinotxt")
    model = train(cfg)
    assert float(model.logit_bias.detach()) != pytest.approx(float(before.logit_bias.detach()))  # learnt
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 2 and "model.logit_bias" in ckpt["model"]
    assert json.loads((out / "config.json").read_text())["flip_lr"] == 0.5


def test_accumulation_under_ddp_on_two_gloo_ranks(tmp_path):
    """2 ranks x 2 micro-batches x 4 studies: every report meets 16 studies, so the first loss is ~ln 16 (the
    per-micro-batch way would give ~ln 8), and DDP synchronises with the scales' gradient in the last pass."""
    import csv
    import math
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(repo))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = tmp_path / "ddp"
    cmd = [str(repo / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "training.pretrain",
           "--arch", "hlip_tiny", "--synthetic", "--synthetic-studies", "32", "--steps", "2", "--batch-size", "4",
           "--accum-steps", "2", "--num-scans", "2", "--lock-text", "--workers", "0", "--log-every", "1",
           "--tensorboard", "off", "--out", str(out)]
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.csv") as f:
        first = float(next(csv.DictReader(f))["loss"])
    assert abs(first - math.log(16)) < abs(first - math.log(8)), first
