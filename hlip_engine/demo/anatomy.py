"""Head anatomy for the phantoms: real MNI152 tissue maps (shipped inside nilearn) plus a synthetic skull.

Why MNI152: the demo must look like a brain to a radiologist and to a model, and nilearn ships the
ICBM 2009a symmetric T1, grey- and white-matter maps in its wheel, so nothing is downloaded. The 1 mm
maps are read with nibabel straight from nilearn's package data (the files that
``nilearn.datasets.load_mni152_{template,gm_template,wm_template}`` read) and averaged to 2 mm blocks:
importing nilearn itself costs seconds and its 2 mm resampling adds more.

Everything here lives on one grid, MNI RAS millimetres (x right, y anterior, z superior), 2 mm voxels,
arrays indexed (x, y, z). Tissue maps are fractions in [0, 1] so partial volume survives resampling.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
VOXEL_MM = 2.0
_PAD = 6  # voxels added on every side


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions of one normal head on the 2 mm MNI grid; ``affine`` maps (x, y, z) index -> RAS mm."""

    gm: np.ndarray  # (X, Y, Z) float32 grey matter
    wm: np.ndarray  # white matter
    csf: np.ndarray  # sulcal + ventricular CSF
    bone: np.ndarray  # calvarium (cortical tables)
    diploe: np.ndarray  # marrow between the tables
    scalp: np.ndarray  # soft tissue + fat outside the skull
    ventricles: np.ndarray  # bool, deep CSF spaces (lateral + third ventricles)
    intracranial: np.ndarray  # bool, everything inside the inner table
    depth_mm: np.ndarray  # distance (mm) from the inner table, inside the skull; 0 outside
    ventricle_dist_mm: np.ndarray  # distance (mm) to the nearest ventricle voxel
    sulcal_dist_mm: np.ndarray  # distance (mm) to the nearest sulcal / cisternal CSF voxel
    affine: np.ndarray  # 4x4

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    def index_of(self, ras_mm) -> np.ndarray:
        """Fractional voxel index (x, y, z) of RAS millimetre points (..., 3)."""
        p = np.asarray(ras_mm, dtype=np.float64)
        return (p - self.affine[:3, 3]) / VOXEL_MM

    def ras_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open RAS coordinate axes (x[:,None,None], y[None,:,None], z[None,None,:]) for broadcasting maths."""
        axes = [self.affine[i, 3] + VOXEL_MM * np.arange(n) for i, n in enumerate(self.shape)]
        return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo phantoms need nilearn (pip install nilearn): its MNI152 maps are the anatomy")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _load_1mm(name: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    path = _nilearn_data_dir() / _FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MNI152 map missing from the nilearn install")
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _block_mean(a: np.ndarray) -> np.ndarray:
    """2x2x2 block average: 1 mm -> 2 mm without any interpolation library."""
    x, y, z = (s // 2 * 2 for s in a.shape)
    a = a[:x, :y, :z]
    return a.reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2 + 0.5


@lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """The normal head, built once per process (about 2 s)."""
    from scipy import ndimage as ndi

    t1, aff1 = _load_1mm("t1")
    gm = _block_mean(_load_1mm("gm")[0] / 255.0)
    wm = _block_mean(_load_1mm("wm")[0] / 255.0)
    t1 = _block_mean(t1 / t1.max())
    # the template's field of view ends at the cerebellum: pad so skull and scalp close below it
    t1, gm, wm = (np.pad(a, _PAD) for a in (t1, gm, wm))
    affine = aff1.copy()
    affine[:3, :3] *= VOXEL_MM
    affine[:3, 3] += 0.5 - _PAD * VOXEL_MM  # a 2x2x2 block's centre sits half a 1 mm voxel further on

    brain = t1 > 0.2  # nilearn's own brain-mask threshold
    # intracranial space: the brain with its sulci closed, holes filled and a 2 mm subarachnoid rim
    intracranial = ndi.binary_closing(np.pad(brain, 4), structure=_ball(3))[4:-4, 4:-4, 4:-4]
    intracranial = ndi.binary_fill_holes(intracranial)
    intracranial = ndi.binary_dilation(intracranial, structure=_ball(1))
    tissue = np.clip(gm + wm, 0.0, 1.0)
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    gm, wm = gm * scale, wm * scale
    csf = np.where(intracranial, 1.0 - tissue, 0.0)

    depth_mm = ndi.distance_transform_edt(intracranial) * VOXEL_MM
    deep = depth_mm > 18.0
    ventricles = deep & (csf > 0.5)
    ventricles = ndi.binary_opening(ventricles, structure=_ball(1)) | (ventricles & (csf > 0.8))
    # distances used to grow CSF spaces in atrophy: from the ventricles, and from the sulcal/cisternal CSF
    ventricle_dist_mm = ndi.distance_transform_edt(~ventricles) * VOXEL_MM
    sulcal = (csf > 0.5) & ~ventricles
    sulcal_dist_mm = ndi.distance_transform_edt(~sulcal) * VOXEL_MM

    # skull: 6-8 mm shell, outer and inner tables of cortical bone with diploe between; then 4-6 mm of scalp
    outside = ndi.distance_transform_edt(~intracranial) * VOXEL_MM
    skull = (outside > 0) & (outside <= 7.0)
    diploe = skull & (outside > 2.5) & (outside <= 5.0)
    bone = skull & ~diploe
    scalp = (outside > 7.0) & (outside <= 12.0)

    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    return Anatomy(gm=f32(gm), wm=f32(wm), csf=f32(csf), bone=f32(bone), diploe=f32(diploe), scalp=f32(scalp),
                   ventricles=ventricles, intracranial=intracranial, depth_mm=f32(depth_mm),
                   ventricle_dist_mm=f32(ventricle_dist_mm), sulcal_dist_mm=f32(sulcal_dist_mm), affine=affine)
