"""Folders of HLIP ``.pt`` scan tensors (the official code's processed data) -> Study.

The official layouts, one study per folder:
  <study>/<scan>.pt        brain MRI for evaluation (Pub-Brain-5, the demo's BraTS case): float [D, H, W]
                           already RPI-oriented, largest spacing first, percentile-clipped to [0, 1]
                           ([D, H, W, C] 4-D tensors: channel 0, as the official loader does);
  <study>/<scan>/img.pt    BrainMRI220K training data: uint8 [D, H, W] (divided by 255 when read);
  <study>/<recon>.pt       chest CT (CT-RATE, Rad-ChestCT): float HU [D, H, W] resampled to 3 x 1 x 1 mm.
Tensors carry no geometry: the affine is the assumed one (RPI at 1 mm for MR-like [0, 1] tensors; LPS at
the given spacing for HU tensors) and ``attributes["hlip_tensor"]`` ("unit" or "hu") tells the recipes
which official steps were already done.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..study import Scan, Study, StudyLoadError
from .folders import folder_scans, path_uid

SCAN_FILE = "img.pt"  # BrainMRI220K: one folder per scan
RPI = np.diag([-1.0, 1.0, -1.0])  # column -> patient right, row -> posterior, slice -> inferior


def tensor_files(folder) -> list[Path]:
    """The scan tensors of a study folder (either layout), sorted by name."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix == ".pt" and not p.name.startswith(".")]
    files += [p / SCAN_FILE for p in folder.iterdir() if p.is_dir() and (p / SCAN_FILE).is_file()]
    return sorted(files)


def tensor_study_folder(pt_file) -> Path:
    """The study folder a ``.pt`` file belongs to: ``<study>/<scan>/img.pt`` -> <study>, else its folder."""
    pt_file = Path(pt_file)
    return pt_file.parent.parent if pt_file.name == SCAN_FILE else pt_file.parent


def is_tensor_folder(path) -> bool:
    """True for a folder holding HLIP scan tensors (``*.pt`` or ``*/img.pt``), or one ``.pt`` file."""
    try:
        p = Path(path)
        if p.is_file():
            return p.suffix == ".pt"
        return p.is_dir() and bool(tensor_files(p))
    except OSError:
        return False


def load_tensor_scan(path, index: int = 0, *, hu_spacing=(3.0, 1.0, 1.0)) -> Scan:
    """One ``.pt`` tensor -> Scan; see the module docstring for the assumed geometry."""
    import torch

    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors come in many types
        raise StudyLoadError(f"{path}: not a readable torch tensor file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, torch.Tensor):
        raise StudyLoadError(f"{path}: holds a {type(obj).__name__}, expected one scan tensor [D, H, W]")
    if obj.ndim == 4:
        obj = obj[..., 0]  # the official loader's rule for multi-channel (e.g. DWI) tensors
    if obj.ndim != 3 or obj.numel() == 0:
        raise StudyLoadError(f"{path}: expected a scan tensor [D, H, W], got shape {tuple(obj.shape)}")
    if obj.dtype == torch.uint8:
        voxels, kind = obj.float().numpy() / np.float32(255.0), "unit"  # as the training loader: x / 255
    elif obj.is_floating_point():
        voxels = obj.float().numpy()
        if not np.isfinite(voxels).all():
            raise StudyLoadError(f"{path}: tensor has non-finite values")
        kind = "unit" if voxels.min() >= 0 and voxels.max() <= 1 else "hu"
    else:
        raise StudyLoadError(f"{path}: tensor dtype {obj.dtype} is neither uint8 nor floating point")
    if kind == "unit":
        affine, modality = np.eye(4), "MR"
        affine[:3, :3] = RPI
        note = "assumed: HLIP MR tensor, RPI, 1 mm"
    else:
        affine, modality = np.diag([hu_spacing[2], hu_spacing[1], hu_spacing[0], 1.0]), "CT"
        note = f"assumed: HLIP CT tensor, {tuple(hu_spacing)} mm (slice, row, column)"
    name = path.parent.name if path.name == SCAN_FILE else path.stem
    return Scan(voxels=np.ascontiguousarray(voxels, dtype=np.float32), affine=affine, modality=modality,
                description=name, series_uid=path_uid(path), series_number=index + 1,
                attributes={"hlip_tensor": kind, "file_format": "HLIP tensor", "geometry": note},
                source=str(path))


def load_tensor_study(path, *, hu_spacing=(3.0, 1.0, 1.0)) -> Study:
    """A folder of HLIP scan tensors (or one ``.pt`` file) as one Study; unreadable tensors are skipped."""
    path = Path(path)
    if not path.exists():
        raise StudyLoadError(f"{path}: no such file or folder")
    if path.is_file():
        scan = load_tensor_scan(path, hu_spacing=hu_spacing)
        return Study(uid=path_uid(path), scans=[scan], description=path.stem, modality=scan.modality,
                     source=str(path))
    scans, skipped = folder_scans(
        path, tensor_files, lambda f, i: load_tensor_scan(f, index=i, hu_spacing=hu_spacing), kind="tensor",
        none_found=f"no HLIP scan tensors (*.pt or */{SCAN_FILE}) in this folder")
    modalities = sorted({s.modality for s in scans})
    return Study(uid=path_uid(path), scans=scans, description=path.name, modality="/".join(modalities),
                 skipped=skipped, source=str(path))
