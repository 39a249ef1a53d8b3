"""Benchmark data as the official dataset classes lay it out, read into model input.

Layouts (``--data`` is ROOT; ids come from the labels CSV's id column):
  ct-rate      ROOT[/valid]/<a>/<a_b>/<a_b_c>.pt for VolumeName <a_b_c>.nii.gz; HU float; every volume a case
  rad-chestct  ROOT/<NoteAcc_DEID>.pt; HU float
  pub-brain-5  ROOT/<study> (the CSV's path; an absolute path is relocated under ROOT by its tail); every
               file in the folder is a scan; folders that are empty are skipped as the official class does
  rsna         ROOT/RSNA_<study>/<series>/*.pt, uint8; each non-empty series folder is a case
  cq500        ROOT/<study>/<series>/*.pt, uint8; all series of a study together
  mr-rate      ROOT/<study_uid>/<scan>/img.pt, uint8
  dicom        ROOT/<folder> of DICOM files, matched by folder name or by StudyInstanceUID
CQ500 and RSNA study folders holding DICOM files instead of ``.pt`` tensors (the public releases) are read
by the engine's loader and prepared by the head-CT recipe on the model's grid (``model.prepare``: the
windows of ``hlip_engine/data/window_presets.json``), one case per study.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..study import StudyLoadError


@dataclass
class Case:
    id: str  # the official case id (volume name, RSNA_<study>/<series>, study path ...)
    row: int  # its row in the labels CSV
    folder: Path
    files: list[Path] = field(default_factory=list)  # scan tensors; empty for a DICOM case
    kind: str = "tensor"  # or "dicom"


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _has_tensors(folder: Path) -> bool:
    return any(p.suffix == ".pt" for p in folder.rglob("*.pt"))


def _name_key(name: str) -> str:
    """'CQ500CT000' and 'CQ500CT0 CQ500CT0' -> 'cq500ct0': first word, trailing number without zeros."""
    word = name.split()[0] if name.split() else name
    match = re.match(r"^(.*?)(\d+)$", word)
    return (match.group(1) + str(int(match.group(2)))).lower() if match else word.lower()


def _relocate(root: Path, study: str) -> Path | None:
    """A CSV path under ROOT: as given when relative, else the longest tail of it that exists under ROOT."""
    p = Path(study)
    if not p.is_absolute():
        return root / p if (root / p).exists() else None
    parts = p.parts[1:]
    for i in range(len(parts)):
        candidate = root.joinpath(*parts[i:])
        if candidate.exists():
            return candidate
    return p if p.exists() else None


def _dicom_uid(folder: Path) -> str | None:
    import pydicom

    for f in sorted(folder.rglob("*")):
        if f.is_file():
            try:
                return str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                           .StudyInstanceUID)
            except Exception:  # not DICOM: try the next file
                continue
    return None


def list_cases(protocol, root, ids: list[str]) -> tuple[list[Case], list[str], list[tuple[str, str]]]:
    """-> (cases in CSV order, ids matching no data, [(case id, why skipped)] for empty folders)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: benchmark data folder not found")
    cases: list[Case] = []
    unmatched: list[str] = []
    empty: list[tuple[str, str]] = []
    layout = protocol.layout
    by_key: dict[str, Path] | None = None
    by_uid: dict[str, Path] | None = None

    def folder_by_name(name: str) -> Path | None:
        nonlocal by_key
        for candidate in (root / name, root / f"RSNA_{name}"):
            if candidate.is_dir():
                return candidate
        if by_key is None:
            by_key = {_name_key(p.name): p for p in root.iterdir() if p.is_dir()}
        return by_key.get(_name_key(name))

    for row, sid in enumerate(ids):
        if layout in ("ct-rate", "rad-chestct"):
            if layout == "ct-rate":
                recon = sid.rsplit(".", 2)[0]
                rel = Path(recon.rsplit("_", 2)[0], recon.rsplit("_", 1)[0], recon + ".pt")
                options = [root / protocol.subdir / rel, root / rel] if protocol.subdir else [root / rel]
            else:
                options = [root / f"{sid}.pt"]
            path = next((p for p in options if p.is_file()), None)
            if path is None:
                unmatched.append(sid)
            else:
                cases.append(Case(sid, row, path.parent, [path]))
        elif layout == "pub-brain-5":
            folder = _relocate(root, sid)
            if folder is None or not folder.is_dir():
                unmatched.append(sid)
            elif not (files := [p for p in _visible(folder) if p.is_file()]):
                empty.append((sid, "empty study folder"))
            else:
                cases.append(Case(sid, row, folder, files))
        elif layout == "mr-rate":
            folder = root / sid
            if not folder.is_dir():
                unmatched.append(sid)
            elif not (files := [d / "img.pt" for d in _visible(folder) if (d / "img.pt").is_file()]):
                empty.append((sid, "no <scan>/img.pt in the study folder"))
            else:
                cases.append(Case(sid, row, folder, files))
        elif layout in ("rsna", "cq500"):
            folder = folder_by_name(sid)
            if folder is None:
                unmatched.append(sid)
            elif not _has_tensors(folder):
                cases.append(Case(sid, row, folder, [], "dicom"))
            elif layout == "rsna":
                series = [d for d in _visible(folder) if d.is_dir() and any(_visible(d))]
                if not series:
                    empty.append((sid, "no non-empty series folder"))
                for d in series:
                    cases.append(Case(f"{folder.name}/{d.name}", row, d, [p for p in _visible(d) if p.is_file()]))
            else:
                files = [p for d in _visible(folder) if d.is_dir() for p in _visible(d) if p.is_file()]
                if files:
                    cases.append(Case(sid, row, folder, files))
                else:
                    empty.append((sid, "no scan tensors in the series folders"))
        elif layout == "dicom":
            folder = root / sid if (root / sid).is_dir() else None
            if folder is None:
                if by_uid is None:
                    by_uid = {u: p for p in _visible(root) if p.is_dir() and (u := _dicom_uid(p))}
                folder = by_uid.get(sid)
            if folder is None:
                unmatched.append(sid)
            else:
                cases.append(Case(sid, row, folder, [], "dicom"))
        else:
            raise ValueError(f"protocol {protocol.benchmark}: unknown layout {layout!r}")
    return cases, unmatched, empty


# --- reading a case into model input ------------------------------------------------------------------------
def _load_tensor(path: Path):
    import torch

    try:
        t = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors come in many types
        raise StudyLoadError(f"{path}: not a readable tensor file ({type(e).__name__}: {e})") from e
    if not isinstance(t, torch.Tensor) or t.ndim not in (3, 4):
        raise StudyLoadError(f"{path}: expected a 3-D (or 4-D) tensor, got {getattr(t, 'shape', type(t))}")
    return t


def input_grid(protocol, model) -> dict:
    """The grid a tensor case is brought to, from the model (its trained input) and the protocol."""
    spec = protocol.input
    kind = spec["kind"]
    visual = (model.config.get("visual") or {}) if model is not None else {}
    pre = (model.config.get("preprocess") or {}) if model is not None else {}
    if kind == "hu-crop":
        return {"kind": kind, "window": list(spec["window"]),
                "target": list(visual.get("input_size") or spec["official_grid"])}
    if kind == "square-resize":
        crop = int(pre.get("crop") or (visual.get("input_size") or spec["official_grid"])[-1])
        size = int(pre.get("size") or crop + (spec["size"] - spec["official_grid"][-1]))
        return {"kind": kind, "scale": spec["scale"], "slices": int(spec["slices"]), "size": size, "crop": crop}
    return {"kind": kind, **({"dicom_recipe": spec["dicom_recipe"]} if "dicom_recipe" in spec else {})}


def load_case(case: Case, grid: dict, model=None):
    """-> float32 tensor [N, 1, D, H, W], normalised as the official dataset class does."""
    import torch

    from ..preprocessing import _normalise, _pad_crop, _square_resize, _window
    from ..recipes.geometry import start_map

    if case.kind == "dicom" or grid["kind"] == "model-recipe":
        from ..io import load_study

        recipe = grid.get("dicom_recipe")  # head CT for CQ500 / RSNA; else the model's own recipe
        return torch.as_tensor(model.prepare(load_study(case.folder), recipe).tensor).float()
    scans = []
    for path in case.files:
        t = _load_tensor(path)
        if grid["kind"] == "hu-crop":
            x = _window(t.float(), *grid["window"])[None]
            x, _ = _pad_crop(x, tuple(start_map(n) for n in x.shape[1:]), grid["target"])
        elif grid["kind"] == "square-resize":
            t = t[..., 0] if t.ndim == 4 else t
            x, _ = _square_resize(t.float()[None] / grid["scale"], grid["size"], grid["slices"], grid["crop"])
        elif grid["kind"] == "uint8":
            if t.ndim != 3:
                raise StudyLoadError(f"{path}: expected a 3-D uint8 scan tensor, got shape {tuple(t.shape)}")
            x = t.float()[None] / 255.0
        else:
            raise ValueError(f"unknown input kind {grid['kind']!r}")
        scans.append(_normalise(x))
    shapes = {tuple(s.shape) for s in scans}
    if len(shapes) > 1:
        raise StudyLoadError(f"{case.folder}: scans of different shapes {sorted(shapes)} cannot form one study")
    return torch.stack(scans)


def targets_of(cases: list[Case], targets: np.ndarray) -> np.ndarray:
    return targets[[c.row for c in cases]] if cases else np.zeros((0, targets.shape[1]), int)
