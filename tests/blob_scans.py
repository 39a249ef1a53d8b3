"""Small head-like test volumes shared by the index tests (local folders and PACS-built)."""
import numpy as np

from hlip_engine.study import Scan


def blob_scan(seed: int, modality: str, description: str) -> Scan:
    """A small head-like volume: a bright blob whose place and size differ between studies."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:8, 0:24, 0:24]
    cy, cx, r = rng.uniform(8, 16), rng.uniform(8, 16), rng.uniform(20, 80)
    v = 900 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2 + (z - 4) ** 2 * 4) / r) + 60 * rng.random((8, 24, 24))
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = (-10.0, -10.0, -12.0)
    return Scan(v.astype(np.float32), affine, modality=modality, description=description)
