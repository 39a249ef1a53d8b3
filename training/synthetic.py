"""A built-in synthetic archive for smoke tests: studies whose images really match their reports.

Like open_clip's synthetic dataset it needs no files, but unlike it the pairing is learnable: each
"finding" is a large textured region at its own place in the volume, and the report names the
findings present. The texture (stripes of a finding-specific direction and period) matters: a randomly
initialised ViT's CLS output is close to an average over patches, which a blob's position barely moves
but a texture moves in its own direction, so a correct trainer drives the contrastive loss down within
a few dozen steps -- what the tests check. Every scan of a study shows the same findings with its own
contrast and noise.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import IMAGE_MEAN, IMAGE_STD

# (sentence, region centre as fractions of (depth, rows, columns), stripe wave vector in cycles per voxel)
FINDINGS = [
    ("Mass in the right frontal lobe.", (0.25, 0.25, 0.25), (0.0, 0.25, 0.0)),
    ("Mass in the left frontal lobe.", (0.25, 0.25, 0.75), (0.0, 0.0, 0.25)),
    ("Infarct in the right occipital lobe.", (0.25, 0.75, 0.25), (0.0, 0.125, 0.125)),
    ("Infarct in the left occipital lobe.", (0.25, 0.75, 0.75), (0.0, 0.125, -0.125)),
    ("Haemorrhage in the right cerebellum.", (0.75, 0.25, 0.25), (0.25, 0.0, 0.0)),
    ("Haemorrhage in the left cerebellum.", (0.75, 0.25, 0.75), (0.0, 0.5, 0.0)),
    ("Oedema around the right basal ganglia.", (0.75, 0.75, 0.25), (0.0, 0.0, 0.5)),
    ("Oedema around the left basal ganglia.", (0.75, 0.75, 0.75), (0.125, 0.125, 0.0)),
]
NORMAL = "No acute intracranial abnormality."


class SyntheticStudies(Dataset):
    """``n`` studies of 1..``max_scans`` scans of ``size`` (D, H, W); items addressed like StudyDataset."""

    def __init__(self, n: int = 64, *, size: tuple[int, int, int] = (16, 32, 32), num_scans: int = 2,
                 max_scans: int = 3, train: bool = True, seed: int = 0, prefix: str = "This MRI study shows: "):
        self.n, self.size, self.num_scans, self.max_scans = n, tuple(size), num_scans, max_scans
        self.train, self.seed, self.prefix = train, seed, prefix

    def __len__(self) -> int:
        return self.n

    def findings(self, index: int) -> list[int]:
        """Which findings study ``index`` has: one or two, or none for every 9th study."""
        rng = np.random.default_rng((self.seed, 7919, index))
        if index % 9 == 8:
            return []
        k = 1 + int(rng.random() < 0.3)
        return sorted(rng.choice(len(FINDINGS), size=k, replace=False).tolist())

    def study_id(self, index: int) -> str:
        return f"synthetic-{index:05d}"

    def sentences(self, index: int) -> list[str]:
        found = self.findings(index)
        return [FINDINGS[i][0] for i in found] if found else [NORMAL]

    def scan(self, index: int, scan: int) -> torch.Tensor:
        """[D, H, W] in [0, 1]: brain-like background, the study's blobs, scan-specific contrast and noise."""
        rng = np.random.default_rng((self.seed, index, scan))
        d, h, w = self.size
        vz, vy, vx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")  # voxel indices
        z, y, x = vz / max(d - 1, 1), vy / max(h - 1, 1), vx / max(w - 1, 1)
        img = 0.3 + 0.1 * np.exp(-((z - 0.5) ** 2 + (y - 0.5) ** 2 + (x - 0.5) ** 2) / 0.2)
        contrast = rng.uniform(0.7, 0.9)
        for i in self.findings(index):
            _, (cz, cy, cx), (kz, ky, kx) = FINDINGS[i]
            region = np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.35 ** 2))  # broad: most patches see it
            stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (kz * vz + ky * vy + kx * vx))
            img += contrast * region * stripes
        img += rng.normal(0, 0.03, size=img.shape)
        return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))

    def n_scans(self, index: int) -> int:
        return 1 + index % self.max_scans

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        sentences = self.sentences(index)
        scans = list(range(self.n_scans(index)))
        if self.train:
            rng = np.random.default_rng((self.seed, epoch, index, 1))
            scans = [scans[i] for i in rng.permutation(len(scans))]
            scans = (scans * -(-self.num_scans // len(scans)))[:self.num_scans]
            sentences = [sentences[i] for i in rng.permutation(len(sentences))]
        images = torch.stack([(self.scan(index, s) - IMAGE_MEAN) / IMAGE_STD for s in scans])[:, None]
        return images, self.prefix + " ".join(sentences), index  # [N, 1, D, H, W]
