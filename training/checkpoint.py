"""Training checkpoints that survive kill -9: written to a temporary file, then renamed over the old one.

A checkpoint holds everything needed to continue as if never stopped: model and loss parameters,
optimiser moments, schedule step, AMP scaler, each rank's random-number state and the data position
(epoch and batch within it). Model and optimiser states are gathered in full ("full state dict"), so
the same code serves DDP, FSDP and a single process, and a run may resume on another world size
(the RNG streams are then re-seeded, which is the only thing that cannot carry over).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from hlip_engine.atomic import atomic_write


def atomic_torch_save(obj, path: str | Path) -> Path:
    """torch.save to ``path`` atomically (hlip_engine.atomic.atomic_write: temp sibling, fsync, os.replace)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return path


def rng_state() -> dict:
    # plain types and tensors only, so that resuming can read the file with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def get_train_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimiser state dicts; a collective call under DDP/FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def set_train_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict,
                    optim_sd: dict, frozen: set[str]) -> None:
    """Restore a full state; the checkpoint may omit only ``frozen`` parameters (they come from the init)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    result = set_state_dict(module, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                            options=StateDictOptions(full_state_dict=True, strict=False))
    missing = sorted(set(result.missing_keys) - frozen) if result is not None else []
    if missing:
        raise ValueError(f"checkpoint lacks trained weights {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                         "was it written with other model options?")


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable training checkpoint ({e})") from e
    missing = {"model", "optimizer", "step", "epoch", "batch_in_epoch"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: not a training checkpoint of training.pretrain (missing {sorted(missing)})")
    return ckpt


def find_resume(out_dir: str | Path, resume: str) -> Path | None:
    """``--resume auto`` -> OUT/checkpoints/last.pt when it exists; a path -> that path."""
    if resume in ("", "none"):
        return None
    if resume == "auto":
        last = Path(out_dir) / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return Path(resume)
