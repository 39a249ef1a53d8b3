"""``python -m training.pretrain``: HLIP language-image pre-training on studies and their reports.

The same script runs alone or under torchrun (like nanoGPT's train.py it reads RANK / LOCAL_RANK /
WORLD_SIZE); only rank 0 logs and writes. Examples::

    python -m training.pretrain --arch hlip_tiny --synthetic --steps 30 --out runs/smoke
    torchrun --nproc_per_node=4 -m training.pretrain --recipe ct-rate \\
        --data ct_rate/files/raw_annotation.json --data-root /data/ct_rate/train --out runs/ct_rate
    torchrun --nproc_per_node=8 -m training.pretrain --recipe brain-mri --data cache/manifest.json \\
        --batch-size 8 --warmup 2000 --out runs/brain     # flags override the recipe's values
    python -m training.pretrain --out runs/brain        # after a crash: resumes from runs/brain/checkpoints

Recipes (``training/recipes/*.json``: brain-mri, head-ct, ct-rate, two-head-2026) hold the official
hyper-parameters and cite the official files; they start the image tower from timm's MAE ViT
(``--init-2d mae``, read from the Hugging Face cache, never downloaded; ``--init-2d none`` = from scratch).
Precedence: defaults < --recipe < --config < flags.

The run folder holds config.json (every option, resolved), metrics.csv (training), eval.csv,
checkpoints/last.pt (atomic; ``--resume``) and, at the end, model.safetensors in the engine's format
(``hlip_engine.load_model`` and the napari plugin open it).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from hlip_engine.atomic import atomic_write, atomic_write_text

from .config import TrainConfig, parse_config

if TYPE_CHECKING:  # torch loads inside train(), so ``--help`` answers at once
    from .distributed import Dist


# --------------------------------------------------------------------------------------------------
# logs (rank 0 only)
# --------------------------------------------------------------------------------------------------
class RunLog:
    """metrics.csv (+ TensorBoard when installed and wanted) and eval.csv; silent on other ranks."""

    FIELDS = ["step", "epoch", "loss", "lr", "logit_scale", "studies_per_s", "elapsed_s"]

    def __init__(self, out: Path, enabled: bool, tensorboard: str):
        self.out, self.enabled, self.tb = out, enabled, None
        self.eval_rows: list[dict] = []
        if not enabled:
            return
        self.metrics_path = out / "metrics.csv"
        if tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                if tensorboard == "on":
                    raise ValueError("--tensorboard on needs the tensorboard package") from None
        eval_path = out / "eval.csv"
        if eval_path.is_file():
            with open(eval_path, newline="") as f:
                self.eval_rows = list(csv.DictReader(f))

    def forget_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint (those steps are trained again)."""
        if not self.enabled:
            return
        self.eval_rows = [r for r in self.eval_rows if int(r["step"]) <= step]
        if self.metrics_path.is_file():
            with open(self.metrics_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            with atomic_write(self.metrics_path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.FIELDS)
                w.writeheader()
                w.writerows(rows)

    def train(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.metrics_path.is_file()
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.FIELDS})
        if self.tb:
            for k in ("loss", "lr", "logit_scale", "studies_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def eval(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.eval_rows.append({"step": step, **metrics})
        fields = list(dict.fromkeys(k for r in self.eval_rows for k in r))
        with atomic_write(self.out / "eval.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.eval_rows)
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(f"eval/{k}", v, step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def say(env: Dist, msg: str) -> None:
    if env.is_main:
        from tqdm import tqdm

        tqdm.write(msg)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def _held_out(study_id: str, fraction: float) -> bool:
    return (zlib.crc32(study_id.encode()) % 10_000) < fraction * 10_000  # stable across runs and machines


def build_datasets(cfg: TrainConfig, size: tuple[int, int, int], max_scans: int | None = None, log=None,
                   sentence_pairs: bool = False, token_grid=None):
    """(train, eval or None) for the manifest or the synthetic archive, at the model's input size."""
    from .ct_rate import INVALID_VOLUMES
    from .data import StudyDataset, load_manifest
    from .synthetic import SyntheticStudies

    prefix = None if cfg.report_prefix == "auto" else cfg.report_prefix
    if cfg.synthetic:
        kw = {"size": size, "num_scans": cfg.num_scans}
        if prefix is not None:
            kw["prefix"] = prefix
        train = SyntheticStudies(cfg.synthetic_studies, train=True, seed=cfg.seed, **kw)
        held = SyntheticStudies(max(16, cfg.synthetic_studies // 4), train=False, seed=cfg.seed + 1, **kw)
        return train, held
    root = cfg.data_root or None
    window = tuple(cfg.hu_window) if cfg.hu_window else None
    kw = {"size": size, "num_scans": cfg.num_scans, "prefix": prefix, "seed": cfg.seed, "hu_window": window,
          "max_scans": max_scans,
          "exclude": INVALID_VOLUMES if cfg.exclude_volumes is None else tuple(cfg.exclude_volumes),
          "geometry": cfg.geometry, "log": log}
    studies = load_manifest(cfg.data)
    train_ids = list(studies)
    held = None
    if cfg.val_data:
        held = StudyDataset(cfg.val_data, root=root, train=False, **kw)
    elif cfg.val_fraction > 0:
        held_ids = [k for k in studies if _held_out(k, cfg.val_fraction)]
        train_ids = [k for k in studies if k not in set(held_ids)]
        held = StudyDataset(cfg.data, root=root, train=False, ids=held_ids, **kw) if held_ids else None
    train = StudyDataset(cfg.data, root=root, train=True, ids=train_ids, report_subsets=cfg.report_subsets,
                         shuffle_sentences=cfg.shuffle_sentences, flip_lr=cfg.flip_lr,
                         sentence_pairs=sentence_pairs, token_grid=token_grid, **kw)
    return train, held


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
def wrap_distributed(step_module, cfg: TrainConfig, env: Dist):
    """DDP, or FSDP2 with one shard group per transformer block (visual, and text unless cached) plus the rest.

    FSDP cannot shard 0-d parameters (logit scale, SigLIP bias): those stay replicated and their
    gradients are averaged by :func:`sync_replicated_grads`.
    """
    if not env.enabled:
        return step_module
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        scalars = {p for p in step_module.parameters() if p.ndim == 0}
        for block in step_module.model.visual.blocks:
            fully_shard(block)
        if step_module.text_cache is None:  # cached features are computed on cache misses, which differ by rank
            layers = getattr(getattr(step_module.model.text.transformer, "encoder", None), "layer", None) or []
            for layer in layers:
                fully_shard(layer)
        return fully_shard(step_module, ignored_params=scalars)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(step_module, device_ids=[env.local_rank] if env.device.type == "cuda" else None)


def sync_replicated_grads(step_module, env: Dist) -> None:
    """FSDP: average the gradients of the parameters it does not manage (the 0-d scales)."""
    import torch.distributed as dist

    for p in step_module.parameters():
        if p.ndim == 0 and p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= env.world_size


def full_model(step_module, cfg: TrainConfig, model_sd: dict):
    """Under FSDP: an unsharded CPU copy of the model from the gathered full state (rank 0 calls this)."""
    from hlip_engine.model import create_model

    model = create_model(step_module.model.full_config(), text_model=cfg.text_model or None)
    model.load_state_dict({k[len("model."):]: v for k, v in model_sd.items() if k.startswith("model.")})
    return model


def export_model(model, cfg: TrainConfig, path: Path) -> None:
    """Write the engine checkpoint (HLIPModel.save): config embedded, atomic, opened by load_model."""
    model.visual.cfg.patch_dropout = 0.0  # a training-only setting; the exported model infers
    if cfg.report_prefix not in ("", "auto"):  # search queries get the reports' prefix (HLIPModel.encode_query)
        model.config.setdefault("text", {})["query_prefix"] = cfg.report_prefix
    try:
        # text tensors equal to the pretrained tower's are referenced, not copied (load_model checks them)
        model.save(path, text_weights=False)
    finally:
        model.visual.cfg.patch_dropout = cfg.patch_dropout


def train(cfg: TrainConfig, env: Dist | None = None):
    """Run (or resume) the training described by ``cfg``; returns the trained HLIPModel (every rank)."""
    import torch
    from tqdm import tqdm

    from . import checkpoint as ckpt_io
    from .data import StudyBatches, collate
    from .distributed import all_gather_object, all_reduce_mean, barrier, init_distributed
    from .evaluate import evaluate, heldout_protocol, parse_eval_specs, read_labels
    from .loss import create_loss
    from .model_setup import (
        ContrastiveStep,
        TextFeatureCache,
        accumulated_backward,
        build_model,
        resolve_objective,
        text_is_frozen,
    )
    from .optim import CosineSchedule, create_optimizer

    env = env or init_distributed(cfg.device)
    out = Path(cfg.out)
    if cfg.data:
        from .data import load_manifest

        load_manifest(cfg.data)  # a wrong path fails in a second, not after building the model
    if cfg.init_2d and cfg.init_2d.lower() != "none" and not cfg.init:  # a missing MAE file too, in a second
        from hlip_engine.model import get_config

        from .inflate import resolve_init_2d

        resolve_init_2d(cfg.init_2d, width=int(get_config(cfg.arch)["visual"]["width"]))
    # a wrong loss option too, before the run folder is written
    loss_fn = create_loss(cfg.loss, local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad,
                          text_target_tau=cfg.text_target_tau)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    device = env.device
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    use_fp16 = cfg.precision == "fp16"
    amp_dtype = torch.bfloat16 if use_bf16 else torch.float16

    def autocast():
        if not (use_bf16 or use_fp16):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    # -- model, loss, optimiser --------------------------------------------------------------------------
    model = build_model(cfg, log=lambda m: say(env, m))
    if cfg.loss == "siglip" and not cfg.init:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))  # SigLIP's initial temperature
    frozen_text = text_is_frozen(model)
    cache = None
    if cfg.cache_text == "on" or (cfg.cache_text == "auto" and frozen_text):
        if not frozen_text:
            raise ValueError("--cache-text on needs a fully frozen text tower (--lock-text --lock-text-norms, "
                             "no unlocked layers)")
        cache = TextFeatureCache(model.text)
    objective = resolve_objective(cfg, model)
    if objective == "two-head" and cfg.loss != "clip":
        raise ValueError("--objective two-head uses the CLIP loss on both heads; drop --loss siglip")
    if cfg.lesion_guidance > 0 and (cfg.accum_steps > 1 or cfg.synthetic):
        raise ValueError("--lesion-guidance needs a cache with lesions (training.prepare --lesions), "
                         "without --synthetic and with --accum-steps 1")
    step_module = ContrastiveStep(model, loss_fn, cache, objective=objective,
                                  lesion_guidance=cfg.lesion_guidance,
                                  lesion_guidance_levels=tuple(cfg.lesion_guidance_levels or ("study",))).to(device).train()
    frozen = {n for n, p in step_module.named_parameters() if not p.requires_grad}
    wrapped = wrap_distributed(step_module, cfg, env)
    optimizer = create_optimizer([step_module], lr=cfg.lr, weight_decay=cfg.wd,
                                 betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, text_lr_scale=cfg.text_lr_scale)
    scaler = torch.amp.GradScaler(device.type, enabled=use_fp16)

    # -- data ---------------------------------------------------------------------------------------------
    size = tuple(model.visual.cfg.input_size)
    token_grid = ((tuple(model.visual.cfg.grid), tuple(model.visual.cfg.patch_size))
                  if cfg.lesion_guidance > 0 else None)
    train_set, held_set = build_datasets(cfg, size, max_scans=model.visual.cfg.max_scans,
                                         log=lambda m: say(env, m), sentence_pairs=objective == "two-head",
                                         token_grid=token_grid)
    batches = StudyBatches(len(train_set), cfg.batch_size, rank=env.rank, world_size=env.world_size,
                           seed=cfg.seed)
    if len(batches) < cfg.accum_steps:
        raise ValueError(f"{len(train_set)} studies give {len(batches)} batches per epoch, fewer than "
                         f"--accum-steps {cfg.accum_steps}")
    steps_per_epoch = len(batches) // cfg.accum_steps
    total = cfg.steps or steps_per_epoch * cfg.epochs
    warmup = cfg.warmup
    if cfg.warmup_cap > 0 and warmup > max(1, int(total * cfg.warmup_cap)):
        warmup = max(1, int(total * cfg.warmup_cap))
        say(env, f"warm-up {cfg.warmup} steps capped at {warmup} ({cfg.warmup_cap:g} of {total} steps; "
                 "--warmup-cap 0 keeps it whole, as open_clip)")
    schedule = CosineSchedule(optimizer, lr=cfg.lr, warmup=warmup, total=total, min_ratio=cfg.min_lr_ratio)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=batches, collate_fn=collate, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # leaves the global RNG (the model's) alone
        prefetch_factor=2 if cfg.workers > 0 else None)
    zeroshot = None
    if cfg.zeroshot_csv:
        if not cfg.prompt_set and not cfg.prompts:
            raise ValueError("--zeroshot-csv needs --prompt-set or --prompts")
        ids, labels = read_labels(cfg.zeroshot_csv, cfg.zeroshot_id_column, cfg.zeroshot_labels)
        heldout_protocol(cfg.prompt_set, cfg.prompts, list(labels))  # fail now, not at the first evaluation
        zeroshot = (ids, labels, cfg.prompt_set, cfg.prompts)
    benchmarks = parse_eval_specs(cfg.eval)

    # -- resume ---------------------------------------------------------------------------------------------
    step, epoch, batch_in_epoch = 0, 0, 0
    resume = ckpt_io.find_resume(out, cfg.resume)
    if resume is not None:
        ckpt = ckpt_io.load_checkpoint(resume)
        ckpt_io.set_train_state(wrapped, optimizer, ckpt["model"], ckpt["optimizer"], frozen)
        schedule.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        old_global = ckpt.get("global_batch", cfg.batch_size * env.world_size)
        if old_global != cfg.batch_size * env.world_size:  # another world size: keep the studies seen
            studies_done = batch_in_epoch * old_global
            batch_in_epoch = studies_done // (cfg.batch_size * env.world_size) // cfg.accum_steps * cfg.accum_steps
            if batch_in_epoch + cfg.accum_steps > len(batches):
                epoch, batch_in_epoch = epoch + 1, 0
        rngs = ckpt.get("rng") or []
        if len(rngs) == env.world_size:
            ckpt_io.set_rng_state(rngs[env.rank])
        else:
            torch.manual_seed(cfg.seed + 7 * step + env.rank)
        say(env, f"resumed from {resume} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
    else:
        torch.manual_seed(cfg.seed + env.rank)  # per-rank streams for patch dropout, scan positions

    def save(name: str) -> None:
        model_sd, optim_sd = ckpt_io.get_train_state(wrapped, optimizer)  # collective
        model_sd = {k: v for k, v in model_sd.items() if k not in frozen}  # frozen weights: from the init
        rngs = all_gather_object(ckpt_io.rng_state())
        if env.is_main:
            state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "model": model_sd,
                     "optimizer": optim_sd, "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(),
                     "rng": rngs, "world_size": env.world_size, "global_batch": cfg.batch_size * env.world_size,
                     "config": cfg.to_dict()}
            ckpt_io.atomic_torch_save(state, out / "checkpoints" / name)
        barrier()

    log = RunLog(out, env.is_main, cfg.tensorboard)
    log.forget_after(step)

    sharded = cfg.fsdp and env.enabled

    def gathered_model():
        """The model as rank 0 can use it alone: itself, or under FSDP a full copy (collective call)."""
        if not sharded:
            return model
        model_sd = ckpt_io.get_train_state(wrapped, optimizer)[0]
        return full_model(step_module, cfg, model_sd).to(device) if env.is_main else None

    def run_eval(final: bool = False, final_model=None) -> None:
        """Evaluate on rank 0; at the end with the model already gathered for export."""
        if held_set is None and zeroshot is None and not benchmarks:
            return
        eval_model = final_model if final else gathered_model()
        if env.is_main:
            metrics = evaluate(eval_model, held_set if held_set is not None else train_set, device=device,
                               autocast=autocast, ks=tuple(cfg.recall_k or (1, 5, 10)),
                               max_studies=cfg.max_eval_studies, zeroshot=zeroshot, benchmarks=benchmarks,
                               protocol=cfg.eval_protocol)
            step_module.train()  # evaluate() restored train mode; keep a cached text tower in eval
            if metrics:
                log.eval(step, metrics)
                say(env, f"eval @ {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        barrier()

    # -- the loop ---------------------------------------------------------------------------------------
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not env.is_main,
               dynamic_ncols=True)
    batches.set_epoch(epoch, batch_in_epoch)
    it = iter(loader)
    window_loss, window_n, t_window, t0 = 0.0, 0, time.time(), time.time()
    last_saved = step
    while step < total:
        lr = schedule.apply(step)
        optimizer.zero_grad(set_to_none=True)
        if cfg.accum_steps == 1:
            images, reports, _, *masks = next(it)
            with autocast():
                loss = wrapped(images.to(device, non_blocking=True), reports,
                               lesion_masks=masks[0] if masks else None)
            scaler.scale(loss).backward()
            step_loss = float(loss.detach())
            batch_in_epoch += 1
        else:  # open_clip's accum_freq: one loss over the k micro-batches (features cached)
            micro_batches = []
            for _ in range(cfg.accum_steps):
                images, reports, _ = next(it)
                micro_batches.append((images.to(device, non_blocking=True), reports))
                batch_in_epoch += 1
            no_sync = wrapped.no_sync if env.enabled and not cfg.fsdp else None
            step_loss = accumulated_backward(wrapped, micro_batches, autocast=autocast, scaler=scaler,
                                             no_sync=no_sync)
        if sharded:
            sync_replicated_grads(step_module, env)
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(step_module.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step_module.clamp_logit_scale(cfg.max_logit_scale)
        step += 1
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss is {step_loss} at step {step}; lower --lr or check the data")
        window_loss += step_loss
        window_n += 1
        bar.update()
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}",
                        **({"guidance": f"{step_module.last_guidance:.3f}"} if cfg.lesion_guidance > 0 else {}))
        epoch_done = batch_in_epoch + cfg.accum_steps > len(batches)
        if epoch_done:  # the next step starts a new pass (incomplete accumulation groups are dropped)
            epoch, batch_in_epoch = epoch + 1, 0
            batches.set_epoch(epoch, 0)
            it = iter(loader)
        if step % cfg.log_every == 0 or step == total or epoch_done:
            now = time.time()
            mean_loss = all_reduce_mean(window_loss / window_n, device)
            studies = window_n * cfg.batch_size * cfg.accum_steps * env.world_size
            log.train({"step": step, "epoch": epoch, "loss": round(mean_loss, 6), "lr": lr,
                       "logit_scale": round(float(model.logit_scale.detach().float().exp()), 4),
                       "studies_per_s": round(studies / max(now - t_window, 1e-9), 3),
                       "elapsed_s": round(now - t0, 2)})
            window_loss, window_n, t_window = 0.0, 0, now
        if step % cfg.save_every == 0 or epoch_done or step == total:
            save("last.pt")
            last_saved = step
            if epoch_done and cfg.keep_epochs and env.is_main:
                import shutil

                shutil.copyfile(out / "checkpoints" / "last.pt", out / "checkpoints" / f"epoch_{epoch}.pt")
        if step < total and ((cfg.eval_every and step % cfg.eval_every == 0) or (epoch_done and benchmarks)):
            run_eval()  # the official benchmarks at the official cadence: every epoch
    bar.close()
    if last_saved != step:
        save("last.pt")
    final = gathered_model()  # (collective under FSDP: every rank calls it; None on ranks > 0 then)
    run_eval(final=True, final_model=final)
    if env.is_main:
        export_model(final, cfg, out / "model.safetensors")
        atomic_write_text(out / "done.json", json.dumps({"step": step, "epoch": epoch}))
        say(env, f"done: {step} steps; model -> {out / 'model.safetensors'}")
        if cache is not None:
            say(env, f"text cache: {cache.hits} hits, {cache.misses} misses")
    log.close()
    barrier()
    return model


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = parse_config(argv)
    from .distributed import cleanup, init_distributed

    env = init_distributed(cfg.device)
    try:
        train(cfg, env)
    except (ValueError, FileNotFoundError) as e:
        print(f"training.pretrain: error: {e}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
