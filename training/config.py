"""Every option of ``training.pretrain`` in one dataclass; the CLI, config files and the saved run agree.

Precedence: built-in defaults < ``--config FILE`` (JSON, or YAML when PyYAML is installed) < flags.
The resolved configuration is written to ``OUT/config.json`` so a run can be repeated with
``--config OUT/config.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


def opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- data ---
    data: str = opt("", "manifest JSON (ours from training.prepare, or the official HLIP layout)")
    data_root: str = opt("", "folder holding the scan tensors (default: the manifest's folder)")
    synthetic: bool = opt(False, "train on the built-in synthetic studies (smoke tests; no files needed)")
    synthetic_studies: int = opt(96, "number of synthetic training studies")
    val_data: str = opt("", "held-out manifest for retrieval / zero-shot (default: a split of --data)")
    val_fraction: float = opt(0.0, "fraction of --data held out for evaluation when --val-data is not given")
    num_scans: int = opt(8, "scans drawn at random per study per step (repeated when a study has fewer)")
    report_prefix: str = opt("auto", "text before the report sentences; auto = by modality ('This MRI study shows: '), "
                                     "none for the official CT-RATE layout (its reports are the official string); "
                                     "'' = nothing")
    shuffle_sentences: bool = opt(True, "shuffle each training report's sentences (the paper's); --no-shuffle-sentences "
                                        "lets a locked text tower's feature cache serve every epoch after the first")
    report_subsets: float = opt(0.0, "probability that a training report is cut to a random subset of its sentences "
                                      "(teaches short texts: search queries, prompts)")
    hu_window: list[float] = opt(None, "LOW HIGH: Hounsfield window for raw-HU caches (official CT-RATE layout)",
                                 nargs=2)
    geometry: str = opt("auto", "scan tensor -> model grid: fit (crop within the 256->224 margin, else resample), "
                                "pad-crop (the official CT-RATE zero-pad + centre-crop), auto (pad-crop for the "
                                "official CT-RATE layout, fit otherwise)", choices=["auto", "fit", "pad-crop"])
    exclude_volumes: list[str] = opt(None, "recon names to leave out (default: the three invalid CT-RATE volumes "
                                           "the official code excludes); a study left without any is skipped, "
                                           "with a note", nargs="+")
    flip_lr: float = opt(0.0, "probability that a training study is mirrored left-right (every scan, along the "
                              "patient's left-right axis) with left/right swapped in its report (0 = off)")
    workers: int = opt(2, "DataLoader worker processes per rank (0 = load in the training process)")
    # --- model ---
    arch: str = opt("hlip_tiny", "engine architecture name (hlip_engine/model/configs/*.json) or a JSON file")
    text_model: str = opt("", "text tower (default: the architecture's)")
    init_2d: str = opt("", "2-D ViT checkpoint inflated to 3-D by averaging to start the image tower: a local file, "
                           "'mae' (timm's vit_base_patch16_224.mae from the Hugging Face cache; no download), "
                           "or 'none' (from scratch, on purpose)")
    init: str = opt("", "engine checkpoint (HLIPModel.save or official) to start from instead of random weights")
    lock_text: bool = opt(False, "freeze the text transformer as open_clip's --lock-text: weights frozen, LayerNorms "
                                 "trainable, dropout active (the projection trains)")
    lock_text_norms: bool = opt(False, "with --lock-text: also freeze the LayerNorms and run the tower without dropout "
                                       "(open_clip's --lock-text-freeze-layer-norm, stiffer; lets --cache-text work)")
    lock_text_unlocked_layers: int = opt(0, "with --lock-text: leave this many last text layers trainable")
    text_lr_scale: float = opt(1.0, "learning rate of the (unlocked) pretrained text transformer = --lr times this")
    cache_text: str = opt("auto", "cache the locked text tower's features per report: auto (when fully locked), on, off",
                          choices=["auto", "on", "off"])
    patch_dropout: float = opt(0.0, "fraction of image patch tokens dropped in training (0.25-0.5 speeds it up)")
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    # --- loss ---
    loss: str = opt("clip", "contrastive loss", choices=["clip", "siglip"])
    objective: str = opt("auto", "single: output 0 against the report; two-head (HLIP 2026): output 0 against one "
                                 "random report sentence, output 1 against the whole report, each head with its "
                                 "own learnt scale (logit_scale, logit_bias); auto = two-head for models with two "
                                 "outputs", choices=["auto", "single", "two-head"])
    local_loss: bool = opt(False, "CLIP: score only this rank's rows against the gathered batch")
    gather_with_grad: bool = opt(False, "let gradients flow through the all-gathered features")
    lesion_guidance: float = opt(0.0, "weight of the lesion-guidance term (training/lesions.py): -log of the "
                                      "share of the study-level CLS attention on known lesion tokens; needs a "
                                      "cache made with training.prepare --lesions; 0 = off (plain CLIP)")
    lesion_guidance_levels: list[str] = opt(None, "block levels whose CLS attention the guidance term reads "
                                                  "(default: study; add scan for each scan's CLS copy)", nargs="+",
                                            choices=["study", "scan"])
    text_target_tau: float = opt(0.0, "CLIP: soft targets softmax(cos(report_i, report_j) / tau) so repeated "
                                      "reports are not negatives of each other (0 = one-hot, plain CLIP)")
    max_logit_scale: float = opt(100.0, "clamp exp(logit_scale) to this temperature")
    # --- optimisation ---
    batch_size: int = opt(8, "studies per rank per micro-batch")
    accum_steps: int = opt(1, "micro-batches accumulated per optimiser step")
    epochs: int = opt(1, "passes over the training studies (ignored when --steps is given)")
    steps: int = opt(0, "optimiser steps in total (overrides --epochs)")
    lr: float = opt(5e-4, "peak learning rate")
    min_lr_ratio: float = opt(0.0, "final learning rate as a fraction of --lr")
    warmup: int = opt(100, "linear warm-up steps (open_clip: 10000; capped by --warmup-cap)")
    warmup_cap: float = opt(0.1, "cap the warm-up at this fraction of the run (0 = no cap, as open_clip)")
    wd: float = opt(0.2, "AdamW weight decay (not applied to biases, norms, logit scale, position tables)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2")
    eps: float = opt(1e-6, "AdamW epsilon")
    grad_clip: float = opt(0.0, "clip the gradient norm to this (0 = off)")
    precision: str = opt("auto", "auto = bf16 autocast on GPU, fp32 on CPU", choices=["auto", "bf16", "fp16", "fp32"])
    device: str = opt("auto", "auto, cpu or cuda")
    fsdp: bool = opt(False, "shard parameters with FSDP instead of DDP (for ViT-L)")
    seed: int = opt(0, "random seed (data order, scan draws, initialisation)")
    # --- checkpoints and logs ---
    out: str = opt("", "run folder: config.json, metrics.csv, checkpoints/, model.safetensors")
    save_every: int = opt(100, "write OUT/checkpoints/last.pt every N optimiser steps (and at each epoch end)")
    keep_epochs: bool = opt(False, "also keep OUT/checkpoints/epoch_K.pt at each epoch end")
    resume: str = opt("auto", "auto (OUT/checkpoints/last.pt if present), a checkpoint path, or none")
    log_every: int = opt(10, "log training metrics every N steps")
    tensorboard: str = opt("auto", "TensorBoard logs: auto (when installed), on, off", choices=["auto", "on", "off"])
    # --- evaluation ---
    eval_every: int = opt(0, "evaluate every N steps (0 = only at the end; --eval benchmarks also every epoch)")
    eval: list[str] = opt(None, "official zero-shot benchmark BENCHMARK=ROOT:LABELS.csv (repeatable), run by "
                                "hlip_engine.evaluate every epoch and at the end", action="extend", nargs="+")
    eval_protocol: str = opt("paper", "protocol of the --eval benchmarks", choices=["paper", "2026"])
    zeroshot_csv: str = opt("", "labelled CSV of held-out studies: a study-id column and one 0/1 column per label "
                                "(or one class column), scored by hlip_engine.evaluate")
    zeroshot_id_column: str = opt("study_id", "the CSV's study-id column")
    zeroshot_labels: list[str] = opt(None, "CSV label columns to score (default: all but the id)", nargs="+")
    prompt_set: str = opt("", "prompt set name (hlip_engine/data/prompt_sets.json) or a JSON file")
    prompts: list[str] = opt(None, "free prompts LABEL=TEXT (instead of --prompt-set)", nargs="+")
    recall_k: list[int] = opt(None, "retrieval recall@k to report (default: 1 5 10)", nargs="+")
    max_eval_studies: int = opt(256, "cap the evaluation set (0 = all)")
    recipe: str = opt("", "training recipe (training/recipes/NAME.json, or a JSON file): the official "
                          "hyper-parameters; --config and flags override its values")
    config: str = opt("", "JSON (or YAML) file of options; flags given on the command line win")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description="HLIP pre-training on studies + reports: one CPU, one GPU, or many under torchrun. "
                    "Options can also come from --config FILE (JSON/YAML); flags override the file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        help_ = meta.pop("help")
        if f.type in (bool, "bool"):
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        kind = {"int": int, "float": float, "str": str, "list[float]": float, "list[int]": int,
                "list[str]": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        parser.add_argument(_flag(f.name), type=kind, default=f.default, help=help_, **meta)
    return parser


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML config needs PyYAML; install it or use JSON") from None
        values = yaml.safe_load(text) or {}
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{path}: unknown options {unknown}")
    return values


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < ``--recipe`` < ``--config`` < flags."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    recipe = first.recipe
    if first.config:
        file_values = read_config_file(first.config)
        file_values.pop("config", None)
        recipe = file_values.get("recipe", recipe) if first.recipe == "" else first.recipe
    else:
        file_values = {}
    if recipe:
        from .recipes import recipe_options

        try:
            parser.set_defaults(**recipe_options(recipe, known={f.name for f in dataclasses.fields(TrainConfig)}))
        except (ValueError, FileNotFoundError) as e:
            parser.error(str(e))
    parser.set_defaults(**file_values)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**vars(args))
    if not cfg.synthetic and not cfg.data:
        parser.error("give --data MANIFEST or --synthetic")
    if not cfg.out:
        parser.error("give --out DIR for checkpoints, logs and the exported model")
    for name in ("batch_size", "accum_steps", "num_scans", "save_every"):
        if getattr(cfg, name) < 1:
            parser.error(f"{_flag(name)} must be >= 1")
    if cfg.zeroshot_csv and not (cfg.prompt_set or cfg.prompts):
        parser.error("--zeroshot-csv needs --prompt-set or --prompts")
    if cfg.eval:
        from .evaluate import parse_eval_specs

        try:
            parse_eval_specs(cfg.eval)
        except ValueError as e:
            parser.error(str(e))
    if not 0.0 <= cfg.patch_dropout < 1.0:
        parser.error("--patch-dropout must be in [0, 1)")
    if not 0.0 <= cfg.flip_lr <= 1.0:
        parser.error("--flip-lr is a probability in [0, 1]")
    if cfg.flip_lr and cfg.synthetic:
        parser.error("--flip-lr needs manifest data: the synthetic findings are told apart by textures that are "
                     "not mirror images of each other, so a flipped study would not match its report")
    if not 0.0 <= cfg.warmup_cap <= 1.0:
        parser.error("--warmup-cap must be in [0, 1] (0 = no cap)")
    if cfg.lock_text_norms and not cfg.lock_text:
        parser.error("--lock-text-norms goes with --lock-text")
    return cfg
