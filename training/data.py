"""Studies and reports for pre-training: the manifest, uncurated scan sampling, report text, batches.

The manifest follows the official HLIP layout, so one reader serves our cache and theirs::

    {study_id: {"series": {series_name: {"num_slices": 48, "view": "axial", ...}}, "report": [sentences]}}

Scan tensors live at ``ROOT/<study_id>/<series_name>/img.pt`` (official brain-MRI cache: uint8 [D, H, W]
holding round(255 * x) of the [0, 1] image) unless a series entry names its ``file``. Our cache may also
hold float16 [0, 1] tensors. The official CT-RATE manifest lists ``"recons": [file names]`` instead, with
raw Hounsfield tensors at ``ROOT/<study_id minus its last _part>/<study_id>/<recon>.pt``; those are
windowed with ``hu_window`` here.

Sampling is the paper's: in training a fixed number of scans is drawn per study each time it is seen
(shuffled, repeated when the study has fewer), and the report's sentences are shuffled; in evaluation
every scan is used in manifest order and the sentences keep theirs. The randomness comes from a
generator seeded by (seed, epoch, study index), so a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hlip_engine.recipes import IMAGENET_MEAN, IMAGENET_STD

from .flip import AXIS_W, flip_scan, lr_axis, swap_sides

# The paper normalises the [0, 1] image with the mean of ImageNet's channel means / stds (the engine's values).
IMAGE_MEAN, IMAGE_STD = float(np.mean(IMAGENET_MEAN)), float(np.mean(IMAGENET_STD))

REPORT_PREFIXES = {"MR": "This MRI study shows: ", "CT": "This CT study shows: "}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """A free-text report -> sentences (a report given as one string is split on . ! ?)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def load_manifest(path: str | Path) -> dict[str, dict]:
    """Read a manifest (ours or the official) and check the fields the trainer relies on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        studies = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(studies, dict) or not studies:
        raise ValueError(f"{path}: expected a non-empty object {{study_id: {{'series': ..., 'report': ...}}}}")
    for sid, entry in studies.items():
        if not isinstance(entry, dict) or not ("series" in entry or "recons" in entry):
            raise ValueError(f"{path}: study {sid!r} has neither 'series' nor 'recons'")
        if "report" not in entry:
            raise ValueError(f"{path}: study {sid!r} has no 'report'")
    return studies


class ExcludedStudy(ValueError):
    """A study whose every scan is on the exclusion list (skipped with a note, not an error)."""


class StudyRecord:
    """One manifest entry resolved to scan files and report sentences."""

    def __init__(self, root: Path, study_id: str, entry: dict, exclude: frozenset[str] = frozenset()):
        self.study_id = study_id
        self.modality = entry.get("modality", "")
        report = entry["report"]
        self.sentences = split_sentences(report) if isinstance(report, str) else [str(s) for s in report]
        self.raw_hu = "recons" in entry  # official CT-RATE layout: Hounsfield tensors
        self.excluded: list[str] = []  # recons left out (the official CT-RATE invalid volumes)
        if self.raw_hu:
            folder = root / study_id.rsplit("_", 1)[0] / study_id
            names = [r.rsplit(".", 2)[0] if r.endswith(".nii.gz") else r.split(".", 1)[0] for r in entry["recons"]]
            self.excluded = [n for n in names if n in exclude]
            self.scans = [folder / (n + ".pt") for n in names if n not in exclude]
            self.lr_axes = {p: AXIS_W for p in self.scans}
            self.lesions: dict[Path, list[dict]] = {}
        else:
            self.scans, self.lr_axes, self.lesions = [], {}, {}
            for name, info in entry["series"].items():
                path = (root / info["file"] if isinstance(info, dict) and "file" in info
                        else root / study_id / name / "img.pt")
                self.scans.append(path)
                self.lr_axes[path] = lr_axis(info)
                if isinstance(info, dict) and info.get("lesions"):  # training.prepare --lesions
                    self.lesions[path] = info["lesions"]
        if not self.scans and self.excluded:
            raise ExcludedStudy(f"study {study_id!r}: every recon of it ({', '.join(self.excluded)}) is excluded "
                                "as invalid")
        if not self.scans:
            raise ValueError(f"study {study_id!r} lists no scans")

    def report(self, prefix: str, rng: np.random.Generator | None, subsets: float = 0.0,
               shuffle: bool = True) -> str:
        """prefix + sentences; shuffled when a generator is given (training).

        ``subsets``: the probability that a training report is cut to a random 1..n of its (shuffled)
        sentences, so the text tower also learns short texts such as search queries and prompts
        (sentence sampling, as CXR-CLIP does); 0 keeps every sentence. ``shuffle=False`` keeps the written
        order (then a locked text tower sees each report as one fixed text, which its feature cache serves
        after the first epoch).
        """
        sentences = self.sentences
        if rng is not None and len(sentences) > 1:
            if shuffle:
                sentences = [sentences[i] for i in rng.permutation(len(sentences))]
            if subsets > 0 and rng.random() < subsets:
                keep = rng.choice(len(sentences), size=int(rng.integers(1, len(sentences) + 1)), replace=False)
                sentences = [sentences[i] for i in sorted(keep)]
        return prefix + " ".join(sentences)

    def draw_scans(self, num_scans: int, rng: np.random.Generator | None, max_scans: int | None = None) -> list[Path]:
        """Training: ``num_scans`` scans in random order, repeating when the study has fewer. Eval: all.

        An official CT-RATE study (``recons``) gives one recon: a random one in training, as the official
        ``get_scans(shuffle=True)[0]``, the first in evaluation. ``max_scans`` (the model's limit, e.g. 1 for
        the single-scan chest-CT models) caps both.
        """
        if self.raw_hu:
            num_scans = 1
            max_scans = 1 if max_scans is None else min(1, max_scans)
        if max_scans:
            num_scans = min(num_scans, max_scans)
        if rng is None:
            return list(self.scans)[:max_scans or None]
        order = [self.scans[i] for i in rng.permutation(len(self.scans))]
        return (order * math.ceil(num_scans / len(order)))[:num_scans]


def fit_to_size(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """[D, H, W] -> ``size``: centre-crop in-plane within the recipe's resize/crop margin (256 -> 224),
    otherwise resize (trilinear in-plane, nearest-exact through the slices, as the recipes resample)."""
    d, h, w = x.shape
    td, th, tw = size
    if (d, h, w) == (td, th, tw):
        return x
    if th <= h <= math.ceil(th * 8 / 7) and tw <= w <= math.ceil(tw * 8 / 7):
        top, left = (h - th) // 2, (w - tw) // 2
        x = x[:, top:top + th, left:left + tw]
    elif (h, w) != (th, tw):
        x = F.interpolate(x[None, None].float(), size=(d, th, tw), mode="trilinear", align_corners=False)[0, 0]
    if d != td:
        x = F.interpolate(x[None, None].float(), size=(td, th, tw), mode="nearest-exact")[0, 0]
    return x


def pad_crop(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """[D, H, W] -> ``size`` as the official CT-RATE item: zero-pad each axis to at least the size (the
    extra half after, ``pad // 2`` before), then centre-crop (start ``(n - size) // 2``). No resampling."""
    pads = []
    for n, t in zip(reversed(x.shape), reversed(size)):  # F.pad wants the last axis first
        p = max(t - n, 0)
        pads += [p // 2, p - p // 2]
    if any(pads):
        x = F.pad(x[None, None], pads, mode="constant", value=0.0)[0, 0]
    starts = [(n - t) // 2 for n, t in zip(x.shape, size)]
    return x[tuple(slice(s, s + t) for s, t in zip(starts, size))]


_pad_crop = pad_crop  # (the keyword argument below shadows the function's name)


def load_scan_tensor(path: Path, *, size: tuple[int, int, int] | None,
                     hu_window: tuple[float, float] | None = None, pad_crop: bool = False) -> torch.Tensor:
    """A cached scan -> normalised float32 [1, D, H, W] ready for the model.

    pad_crop: fit to ``size`` as the official CT-RATE item does (window, zero-pad, centre-crop); otherwise
    :func:`fit_to_size` (crop within the recipe's margin, else resample)."""
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: scan tensor missing from the cache") from None
    except Exception as e:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: cannot read the scan tensor ({e})") from e
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        raise ValueError(f"{path}: expected a [D, H, W] tensor, got {getattr(x, 'shape', type(x))}")
    if x.ndim == 4:
        x = x[0]
    if hu_window is not None:
        lo, hi = hu_window
        x = ((x.float() - lo) / (hi - lo)).clamp_(0, 1)
    elif x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
    if size is not None:
        x = _pad_crop(x, size) if pad_crop else fit_to_size(x, size)
    return ((x - IMAGE_MEAN) / IMAGE_STD)[None].contiguous()


class StudyDataset(Dataset):
    """Studies of a manifest. Items are addressed by ``(index, epoch)`` so sampling is reproducible.

    Returns ``(scans [N, 1, D, H, W] float32, report str, index)``; N = ``num_scans`` in training, all
    of the study's scans in evaluation.
    """

    def __init__(self, manifest: str | Path | dict, *, root: str | Path | None = None, num_scans: int = 8,
                 train: bool = True, size: tuple[int, int, int] | None = None, prefix: str | None = None,
                 seed: int = 0, hu_window: tuple[float, float] | None = None, ids: list[str] | None = None,
                 report_subsets: float = 0.0, shuffle_sentences: bool = True, flip_lr: float = 0.0,
                 max_scans: int | None = None, exclude: list[str] | tuple[str, ...] = (),
                 geometry: str = "auto", log=None, sentence_pairs: bool = False,
                 token_grid: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None):
        if isinstance(manifest, dict):
            studies, root = manifest, Path(root or ".")
        else:
            studies = load_manifest(manifest)
            root = Path(root) if root is not None else Path(manifest).parent
        keys = list(studies) if ids is None else [k for k in ids if k in studies]
        excluded = frozenset(exclude)
        self.records, self.skipped = [], {}
        for k in keys:
            try:
                self.records.append(StudyRecord(root, k, studies[k], excluded))
            except ExcludedStudy as e:
                self.skipped[k] = str(e)  # every recon of it is an excluded (invalid) volume
        noted = [f"{r.study_id}: {n}" for r in self.records for n in r.excluded] + list(self.skipped)
        if noted and log is not None:
            log(f"skipped {len(noted)} invalid volume(s) listed by the recipe: {', '.join(noted)}")
        self.excluded_volumes = noted
        if not self.records:
            raise ValueError("no study left in the manifest" + (f" after excluding {noted}" if noted else ""))
        self.num_scans, self.train, self.size, self.seed = num_scans, train, size, seed
        self.prefix, self.hu_window, self.report_subsets = prefix, hu_window, float(report_subsets)
        self.shuffle_sentences = bool(shuffle_sentences)
        if not 0.0 <= flip_lr <= 1.0:
            raise ValueError(f"flip_lr is a probability in [0, 1], got {flip_lr}")
        if geometry not in ("auto", "fit", "pad-crop"):
            raise ValueError(f"geometry must be 'auto', 'fit' or 'pad-crop', got {geometry!r}")
        self.flip_lr, self.max_scans, self.geometry = float(flip_lr), max_scans, geometry
        self.sentence_pairs = bool(sentence_pairs)  # the 2026 two-head objective: (report, one sentence)
        self.token_grid = token_grid  # (grid, patch): items also carry lesion token masks (--lesion-guidance)

    def __len__(self) -> int:
        return len(self.records)

    def study_id(self, index: int) -> str:
        return self.records[index].study_id

    def prefix_for(self, record: StudyRecord) -> str:
        """The text before the report: the one given, else none for the official CT-RATE layout (its
        reports are the whole official string), else by modality ("This MRI study shows: ")."""
        if self.prefix is not None:
            return self.prefix
        if record.raw_hu:
            return ""
        return REPORT_PREFIXES.get(record.modality, REPORT_PREFIXES["MR"])

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        record = self.records[index]
        rng = np.random.default_rng((self.seed, epoch, index)) if self.train else None
        window = self.hu_window if record.raw_hu else None
        if record.raw_hu and window is None:
            window = (-1150.0, 350.0)  # CT-RATE's window in the official training
        # CT-RATE geometry: the official zero-pad + centre-crop ('auto': whenever the layout is the official one)
        pad_crop = self.geometry == "pad-crop" or (self.geometry == "auto" and record.raw_hu)
        paths = record.draw_scans(self.num_scans, rng, self.max_scans)
        scans = [load_scan_tensor(p, size=self.size, hu_window=window, pad_crop=pad_crop) for p in paths]
        prefix = self.prefix_for(record)
        report = record.report(prefix, rng, self.report_subsets, self.shuffle_sentences)
        if self.sentence_pairs:  # output 0 of a 2026 model learns single sentences (random one in training)
            if record.sentences:
                k = int(rng.integers(len(record.sentences))) if rng is not None else 0
                report = (report, prefix + record.sentences[k])
            else:
                report = (report, report)
        # a stream of its own, so --flip-lr 0 draws exactly what it drew before the option existed
        flip = self.train and self.flip_lr > 0 and (
            np.random.default_rng((self.seed, epoch, index, 1)).random() < self.flip_lr)
        if flip:
            scans = [flip_scan(x, record.lr_axes[p]) for x, p in zip(scans, paths)]
            report = tuple(swap_sides(r) for r in report) if isinstance(report, tuple) else swap_sides(report)
        if self.token_grid is None:
            return torch.stack(scans), report, index
        return torch.stack(scans), report, index, self.lesion_masks(record, paths, scans, flip)

    def lesion_masks(self, record: StudyRecord, paths: list[Path], scans: list[torch.Tensor], flip: bool):
        """[N, d, h, w] bool: the tokens of each drawn scan on a known lesion (mirrored with the scan).

        The lesion entries are on the grid the cache was prepared at; a scan resized on loading would move
        them, so that is refused."""
        from .lesions import token_mask

        grid, patch = self.token_grid
        masks = []
        for x, p in zip(scans, paths):
            shape = tuple(int(v) * int(q) for v, q in zip(grid, patch))
            if record.lesions.get(p) and tuple(x.shape[-3:]) != shape:
                raise ValueError(f"{p}: cached at {tuple(x.shape[-3:])}, the model's grid is {shape}; lesion "
                                 "guidance needs the cache prepared at the model's grid (training.prepare "
                                 "--option slices=.. size=.. crop=..)")
            m = torch.from_numpy(token_mask(record.lesions.get(p, []), grid, patch))
            masks.append(torch.flip(m, dims=(record.lr_axes[p],)) if flip else m)
        return torch.stack(masks)


class StudyBatches:
    """Batch sampler: each epoch a seeded permutation cut into global batches, each rank taking its slice.

    ``start_batch`` skips the batches a resumed run already trained on, so the data position survives kill -9.
    """

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_batch = 0, 0
        if len(self) == 0:
            raise ValueError(f"{n} studies cannot fill one batch of {batch_size} x {world_size} ranks; "
                             "lower --batch-size or add studies")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)  # incomplete global batches are dropped

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        step = self.batch_size * self.world
        for b in range(self.start_batch, len(self)):
            chunk = order[b * step:(b + 1) * step][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(i, self.epoch) for i in chunk]


def collate(items):
    """-> scans [B, N, 1, D, H, W], reports [B], index [B] (+ lesion token masks [B, N, d, h, w])."""
    scans, reports, index, *masks = zip(*items)
    out = (torch.stack(scans), list(reports), torch.tensor(index))
    return out + (torch.stack(masks[0]),) if masks else out
