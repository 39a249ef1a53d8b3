"""End-to-end pre-training on the synthetic archive: the loss falls, two gloo ranks agree, kill -9 resumes,
and the exported checkpoint opens in the engine with the same embeddings as the training model."""
import csv
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
TORCHRUN = REPO / ".venv" / "bin" / "torchrun"

# 48 synthetic studies / batch 8 = 6 steps an epoch, so 30 steps cross 4 epoch ends (epoch checkpoints)
RUN = ["--arch", "hlip_tiny", "--synthetic", "--synthetic-studies", "48", "--steps", "30", "--batch-size", "8",
       "--num-scans", "2", "--lr", "2e-3", "--warmup", "3", "--lock-text", "--lock-text-norms", "--log-every", "1", "--save-every", "5",
       "--max-eval-studies", "16", "--seed", "0"]


def env():
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
             TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def losses(out: Path) -> list[float]:
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return [float(r["loss"]) for r in rows]


def assert_loss_falls(out: Path) -> None:
    values = losses(out)
    assert len(values) == 30
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert first > 2.0  # ~ln 8: chance for a batch of 8
    assert last < first - 0.5, f"loss did not fall: first {first:.3f} -> last {last:.3f} ({values})"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One in-process run; the model it returns is the training model itself."""
    from training.config import parse_config
    from training.pretrain import train

    out = tmp_path_factory.mktemp("single")
    labels = out / "labels.csv"
    from training.synthetic import SyntheticStudies

    held = SyntheticStudies(16, seed=1)  # the evaluation split of --seed 0
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "mass"])
        for i in range(16):
            w.writerow([held.study_id(i), int(any("Mass" in s for s in held.sentences(i)))])
    torch.set_num_threads(1)
    cfg = parse_config(RUN + ["--out", str(out), "--workers", "0", "--zeroshot-csv", str(labels),
                              "--prompts", "mass=No mass.|Mass in the frontal lobe."])
    model = train(cfg)
    return out, model


def test_loss_falls_and_run_folder_is_complete(single_run):
    out, _ = single_run
    assert_loss_falls(out)
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 30 and config["lock_text"] is True
    assert json.loads((out / "done.json").read_text())["step"] == 30
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 30 and ckpt["epoch"] == 5 and ckpt["batch_in_epoch"] == 0
    # frozen text weights are not duplicated in training checkpoints; trained ones are
    assert not any(k.startswith("model.text.transformer.") for k in ckpt["model"])
    assert "model.text.proj.weight" in ckpt["model"] and "model.logit_scale" in ckpt["model"]
    with open(out / "eval.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert int(row["step"]) == 30 and float(row["eval_studies"]) == 16 and float(row["zeroshot_studies"]) == 16
    assert 0.0 <= float(row["zeroshot_macro_auc"]) <= 1.0
    assert float(row["study_to_report_R@10"]) >= float(row["study_to_report_R@1"])


def test_exported_checkpoint_gives_the_training_models_embeddings(single_run):
    from hlip_engine.model import load_model
    from training.synthetic import SyntheticStudies

    out, model = single_run
    model.eval()
    loaded = load_model(out / "model.safetensors", device="cpu")
    studies = SyntheticStudies(6, seed=5, train=False)
    x = torch.stack([studies[i][0] for i in (2, 5)])  # [2 studies, 3 scans, 1, 16, 32, 32]
    reports = [studies[i][1] for i in range(4)]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.encode_text(reports), model.encode_text(reports), atol=1e-5, rtol=1e-5)
    assert float(loaded.logit_scale) == pytest.approx(float(model.logit_scale.detach()))
    assert loaded.visual.cfg.patch_dropout == 0.0


def test_kill_9_then_resume_finishes_the_same_run(single_run, tmp_path):
    """Killed after a checkpoint, the resumed run ends at step 30 with the uninterrupted run's weights."""
    out = tmp_path / "killed"
    cmd = [str(PYTHON), "-m", "training.pretrain", *RUN, "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            step = torch.load(last, weights_only=False)["step"]
            if step >= 10:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert killed_at is not None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "done.json").exists()
    resumed = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert json.loads((out / "done.json").read_text())["step"] == 30
    assert_loss_falls(out)
    # same data order, RNG and optimiser state: the interrupted run ends where the uninterrupted one did
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(single_run[0] / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")


def test_two_gloo_ranks_under_torchrun(tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "training.pretrain", *RUN,
           "--batch-size", "4", "--out", str(out), "--workers", "0"]
    result = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_loss_falls(out)  # global batch 4 x 2 ranks = the single run's 8
    assert json.loads((out / "done.json").read_text())["step"] == 30
    assert json.loads((out / "config.json").read_text())["batch_size"] == 4
    from hlip_engine.model import load_model

    assert load_model(out / "model.safetensors", device="cpu").embed_dim == 64
    # the run continues on one process with another batch size (the data position is kept in studies)
    more = [a if a != "30" else "32" for a in RUN]
    cmd = [str(PYTHON), "-m", "training.pretrain", *more, "--batch-size", "4", "--out", str(out), "--workers", "0",
           "--max-eval-studies", "0"]
    result = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "at step 30" in result.stdout
    assert json.loads((out / "done.json").read_text())["step"] == 32


def test_bad_options_say_what_is_wrong(tmp_path, capsys):
    from training.config import parse_config
    from training.pretrain import main

    with pytest.raises(SystemExit):
        parse_config(["--synthetic"])  # no --out
    assert main(["--data", str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere.json: manifest not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--synthetic", "--out", "o", "--zeroshot-csv", "labels.csv"])
    assert "--zeroshot-csv needs --prompt-set or --prompts" in capsys.readouterr().err
    assert main(["--synthetic", "--loss", "siglip", "--text-target-tau", "0.1", "--out", str(tmp_path / "s")]) == 2
    assert "--text-target-tau applies to the CLIP loss only" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before the run folder is written


def test_soft_report_targets_train_and_are_recorded(tmp_path):
    from training.config import parse_config
    from training.pretrain import train

    out = tmp_path / "soft"
    cfg = parse_config(["--arch", "hlip_tiny", "--synthetic", "--synthetic-studies", "16", "--steps", "3",
                        "--batch-size", "8", "--text-target-tau", "0.07", "--workers", "0", "--out", str(out)])
    train(cfg)
    assert json.loads((out / "config.json").read_text())["text_target_tau"] == 0.07
    with open(out / "metrics.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)


def test_fsdp_on_two_gloo_ranks(tmp_path):
    out = tmp_path / "fsdp"
    run = [a if a != "30" else "6" for a in RUN]  # --steps 6
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "training.pretrain", *run,
           "--batch-size", "4", "--out", str(out), "--workers", "0", "--fsdp"]
    result = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "done.json").read_text())["step"] == 6
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["model"]["model.visual.blocks.0.attn.qkv.weight"].shape == (192, 64)  # gathered, not a shard
    from hlip_engine.model import load_model

    assert load_model(out / "model.safetensors", device="cpu").embed_dim == 64


def test_siglip_accumulation_patch_dropout_checkpointing_and_partly_unlocked_text(tmp_path):
    """The other training options, a few steps each way, in one run."""
    from hlip_engine.model import create_model
    from training.config import parse_config
    from training.pretrain import train

    torch.set_num_threads(1)
    out = tmp_path / "options"
    cfg = parse_config(["--arch", "hlip_tiny", "--synthetic", "--synthetic-studies", "16", "--steps", "3",
                        "--batch-size", "4", "--accum-steps", "2", "--num-scans", "2", "--loss", "siglip",
                        "--patch-dropout", "0.5", "--grad-checkpointing", "--lock-text",
                        "--lock-text-unlocked-layers", "1", "--max-logit-scale", "5", "--eval-every", "2",
                        "--save-every", "2", "--workers", "0", "--out", str(out)])
    model = train(cfg)
    assert model.visual.grad_checkpointing and model.visual.cfg.patch_dropout == 0.5
    assert float(model.logit_scale.detach().exp()) <= 5.0 + 1e-4  # SigLIP starts at 10, clamped to 5
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 3 and "loss.logit_bias" in ckpt["model"]
    assert float(ckpt["model"]["loss.logit_bias"]) != -10.0  # the SigLIP bias trains
    torch.manual_seed(0)
    fresh = create_model("hlip_tiny")  # the text tower starts from the same pretrained weights
    last, first = "text.transformer.encoder.layer.5.", "text.transformer.encoder.layer.0."
    sd, ref = model.state_dict(), fresh.state_dict()
    assert not torch.equal(sd[last + "output.dense.weight"], ref[last + "output.dense.weight"])
    assert torch.equal(sd[first + "output.dense.weight"], ref[first + "output.dense.weight"])
    with open(out / "eval.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 3]
    assert json.loads((out / "config.json").read_text())["loss"] == "siglip"
