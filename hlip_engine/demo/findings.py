"""Findings a radiologist would report, drawn as changes to the tissue fractions of the normal head.

Two steps, kept apart so a study can be re-rendered from its record alone:
``sample_finding(kind, rng)`` draws the clinical description (side, lobe, size, territory...) as plain JSON,
``apply_finding(tissues, details, anatomy)`` turns that description into tissue fractions, with no randomness.
Every lesion is large and of strong contrast on purpose: the demo model must learn each finding from a
handful of studies. Coordinates are MNI RAS millimetres (x > 0 is the patient's right).
"""
from __future__ import annotations

import numpy as np

from .anatomy import Anatomy

FINDINGS = ("normal", "tumour", "infarct", "haemorrhage", "atrophy")
LOBES = ("frontal", "parietal", "temporal", "occipital")

# lesion centres of the LEFT hemisphere (x < 0); the right side mirrors x
_LOBE_CENTRE = {
    "frontal": (-28.0, 38.0, 28.0),
    "parietal": (-30.0, -50.0, 40.0),
    "temporal": (-46.0, -18.0, -14.0),
    "occipital": (-20.0, -80.0, 8.0),
    "basal ganglia": (-24.0, 2.0, 2.0),
}
# vascular territories as soft ellipsoids: centre (left) and radii in mm, and the lobes they cover
_TERRITORY = {
    "MCA": ((-42.0, -12.0, 12.0), (22.0, 40.0, 30.0), ("frontal", "parietal", "temporal")),
    "ACA": ((-8.0, 12.0, 42.0), (11.0, 42.0, 24.0), ("frontal", "parietal")),
    "PCA": ((-18.0, -76.0, 4.0), (16.0, 22.0, 20.0), ("occipital",)),
}


def _side_x(side: str) -> float:
    return 1.0 if side == "right" else -1.0


def _centre(point, side: str) -> np.ndarray:
    p = np.array(point, dtype=np.float64)
    p[0] = abs(p[0]) * _side_x(side)
    return p


def mirror(point) -> list[float]:
    """The same point in the other hemisphere (the head is symmetric about x = 0 in MNI space)."""
    x, y, z = (float(v) for v in point)
    return [-x, y, z]


# --- drawing the description ------------------------------------------------------------------
def sample_finding(kind: str, rng: np.random.Generator) -> dict:
    """Clinical description of one finding as JSON-ready values (``{}`` details for a normal study)."""
    if kind == "normal":
        return {"finding": "normal"}
    side = str(rng.choice(["left", "right"]))
    jitter = rng.uniform(-6.0, 6.0, size=3)
    if kind == "tumour":
        lobe = str(rng.choice(LOBES))
        size = float(np.round(rng.uniform(20.0, 40.0)))
        return {"finding": "tumour", "side": side, "lobe": lobe, "size_mm": size,
                "centre_ras": (_centre(_LOBE_CENTRE[lobe], side) + jitter).round(1).tolist(),
                "axes": rng.uniform(0.85, 1.15, size=3).round(2).tolist(),
                "oedema_mm": float(np.round(rng.uniform(10.0, 20.0))),
                "necrotic": bool(size >= 28 and rng.random() < 0.6)}
    if kind == "infarct":
        territory = str(rng.choice(list(_TERRITORY), p=[0.5, 0.25, 0.25]))
        centre, radii, lobes = _TERRITORY[territory]
        extent = float(np.round(rng.uniform(0.65, 1.0), 2))
        return {"finding": "infarct", "side": side, "territory": territory, "lobes": list(lobes),
                "lobe": lobes[0] if len(lobes) == 1 else str(rng.choice(lobes)),
                "extent": extent, "centre_ras": (_centre(centre, side) + jitter * 0.5).round(1).tolist(),
                "radii_mm": (np.array(radii) * extent).round(1).tolist(), "age": "acute"}
    if kind == "haemorrhage":
        subtype = "intraparenchymal" if rng.random() < 0.6 else "subdural"
        density = float(np.round(rng.uniform(62.0, 80.0)))
        if subtype == "intraparenchymal":
            lobe = str(rng.choice([*LOBES, "basal ganglia"]))
            size = float(np.round(rng.uniform(18.0, 38.0)))
            return {"finding": "haemorrhage", "subtype": subtype, "side": side, "lobe": lobe, "size_mm": size,
                    "centre_ras": (_centre(_LOBE_CENTRE[lobe], side) + jitter * 0.7).round(1).tolist(),
                    "axes": rng.uniform(0.8, 1.2, size=3).round(2).tolist(), "density_hu": density}
        thickness = float(np.round(rng.uniform(8.0, 16.0)))
        centre = np.array([68.0 * _side_x(side), rng.uniform(-35.0, 15.0), rng.uniform(15.0, 40.0)])
        return {"finding": "haemorrhage", "subtype": subtype, "side": side,
                "lobe": "frontal" if centre[1] > -5 else "parietal", "thickness_mm": thickness,
                "centre_ras": centre.round(1).tolist(), "extent_mm": float(np.round(rng.uniform(65.0, 90.0))),
                "density_hu": density}
    if kind == "atrophy":
        grade = str(rng.choice(["moderate", "marked"]))
        ventricles, sulci = (5.0, 2.5) if grade == "moderate" else (8.0, 4.0)
        return {"finding": "atrophy", "grade": grade, "ventricle_mm": ventricles + float(np.round(rng.uniform(0, 1.5), 1)),
                "sulcal_mm": sulci + float(np.round(rng.uniform(0, 1.0), 1))}
    raise ValueError(f"unknown finding {kind!r}; expected one of {', '.join(FINDINGS)}")


# --- drawing the tissues ----------------------------------------------------------------------
def normal_tissues(anat: Anatomy, sulcal_mm: float = 0.0) -> dict[str, np.ndarray]:
    """Fresh copies of the tissue fractions (a study edits them); ``sulcal_mm`` widens sulci (normal ageing)."""
    t = {name: getattr(anat, name).copy() for name in ("gm", "wm", "csf", "bone", "diploe", "scalp")}
    if sulcal_mm > 0:
        _grow_csf(t, anat, anat.sulcal_dist_mm, sulcal_mm)
    return t


def _soft_ellipsoid(anat: Anatomy, centre, radii, edge_mm: float = 2.0, lobulation: float = 0.0) -> np.ndarray:
    """Fraction (0..1) inside an ellipsoid with a soft rim ``edge_mm`` wide; lobulation bumps the outline."""
    x, y, z = anat.ras_grid()
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    rho = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    if lobulation:
        az = np.arctan2(dy, dx)
        el = np.arctan2(dz, np.sqrt(dx**2 + dy**2) + 1e-6)
        rho = rho * (1.0 + lobulation * np.cos(3 * az + 0.7) * np.cos(2 * el))
    mean_r = float(np.mean(radii))
    return np.clip((1.0 - rho) * mean_r / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _replace(t: dict, fraction: np.ndarray, into: str, tissues=("gm", "wm", "csf"), weights=None) -> None:
    """Move ``fraction`` of each listed tissue (times its weight) into the class ``into``."""
    moved = t.get(into, np.zeros_like(fraction))
    for name in tissues:
        w = 1.0 if weights is None else weights.get(name, 1.0)
        take = t[name] * fraction * w
        t[name] = t[name] - take
        moved = moved + take
    t[into] = moved


def _grow_csf(t: dict, anat: Anatomy, dist_mm: np.ndarray, grow_mm: float) -> None:
    """Turn brain into CSF within ``grow_mm`` of a CSF space (soft over 2 mm): enlarged ventricles or sulci."""
    fraction = np.clip((grow_mm - dist_mm) / 2.0 + 0.5, 0.0, 1.0) * anat.intracranial
    _replace(t, fraction.astype(np.float32), "csf", tissues=("gm", "wm"))


def apply_finding(t: dict[str, np.ndarray], d: dict, anat: Anatomy) -> dict[str, np.ndarray]:
    """Edit tissue fractions ``t`` in place for the finding described by ``d``; returns ``t``."""
    kind = d["finding"]
    inside = anat.intracranial.astype(np.float32)
    if kind == "normal":
        return t
    if kind == "tumour":
        r = d["size_mm"] / 2.0
        radii = [r * a for a in d["axes"]]
        mass = _soft_ellipsoid(anat, d["centre_ras"], radii, lobulation=0.12) * inside
        # vasogenic oedema tracks the white matter around the mass and spares most of the cortex
        halo = _soft_ellipsoid(anat, d["centre_ras"], [x + d["oedema_mm"] for x in radii], edge_mm=4.0) * inside
        _replace(t, mass, "tumour")
        _replace(t, halo * (1.0 - mass), "oedema", tissues=("wm", "gm"), weights={"wm": 1.0, "gm": 0.6})
        if d.get("necrotic"):
            core = _soft_ellipsoid(anat, d["centre_ras"], [x * 0.45 for x in radii])
            _replace(t, core, "necrosis", tissues=("tumour",))
        return t
    if kind == "infarct":
        region = _soft_ellipsoid(anat, d["centre_ras"], d["radii_mm"], edge_mm=4.0, lobulation=0.1) * inside
        x = anat.ras_grid()[0]
        same_side = np.clip((x * np.sign(d["centre_ras"][0]) - 1.0) / 2.0, 0.0, 1.0)  # never cross the midline
        region = region * same_side * (~anat.ventricles)
        _replace(t, region.astype(np.float32) * 0.95, "infarct", tissues=("gm", "wm"))
        return t
    if kind == "haemorrhage":
        if d["subtype"] == "intraparenchymal":
            radii = [d["size_mm"] / 2.0 * a for a in d["axes"]]
            blood = _soft_ellipsoid(anat, d["centre_ras"], radii, edge_mm=1.5, lobulation=0.08) * inside
            rim = _soft_ellipsoid(anat, d["centre_ras"], [x + 4.0 for x in radii], edge_mm=2.0) * inside
            _replace(t, blood, "blood")
            _replace(t, rim * (1.0 - blood) * 0.7, "oedema", tissues=("wm", "gm"))
            return t
        # subdural: a crescent along the inner table, thickest at its centre, tapering over ``extent_mm``
        x, y, z = anat.ras_grid()
        c = d["centre_ras"]
        dist2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        local = d["thickness_mm"] * np.clip(1.0 - dist2 / d["extent_mm"] ** 2, 0.0, 1.0)
        same_side = (x * np.sign(c[0])) > 4.0
        crescent = np.clip((local - anat.depth_mm) / 2.0 + 0.5, 0.0, 1.0) * inside * same_side * (local > 0)
        _replace(t, crescent.astype(np.float32), "blood")
        return t
    if kind == "atrophy":
        _grow_csf(t, anat, anat.ventricle_dist_mm, d["ventricle_mm"])
        _grow_csf(t, anat, anat.sulcal_dist_mm, d["sulcal_mm"])
        return t
    raise ValueError(f"unknown finding {kind!r}; expected one of {', '.join(FINDINGS)}")


def lesion_centre(d: dict) -> list[float] | None:
    """Where the finding is (MNI RAS mm), for checks and relevance maps; None for diffuse findings."""
    return list(d["centre_ras"]) if "centre_ras" in d else None
