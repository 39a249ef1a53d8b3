"""Scan protocols of the phantom studies: which series a brain MRI or a head CT holds, and how each is named.

Real archives differ by vendor (series names, numbering), by slice count and spacing, by field strength and
by what the technologist added (a sagittal T1, a DWI, a coronal reformat). The phantoms draw all of that, so a
model and the loader meet the same untidiness as on clinical studies: a localizer to skip, reformats that share
the patient space of the axial, oblique slabs, vendor naming and numbering.
"""
from __future__ import annotations

import numpy as np

from .acquisition import SeriesPlan

_MR_NAMES = {  # vendor style -> series kind -> SeriesDescription
    "ge": {"loc": "3-PL LOC", "t1": "AX T1", "t2": "AX T2 FSE", "flair": "AX T2 FLAIR", "dwi": "AX DWI 1000",
           "sag_t1": "SAG T1", "cor": "COR T2 FLAIR REFORMAT"},
    "siemens": {"loc": "localizer", "t1": "t1_se_tra", "t2": "t2_tse_tra", "flair": "t2_tirm_tra_dark-fluid",
                "dwi": "ep2d_diff_tra_TRACEW", "sag_t1": "t1_se_sag", "cor": "t2_spc_flair_cor_MPR"},
    "philips": {"loc": "Survey", "t1": "T1W_SE_TRA", "t2": "T2W_TSE_TRA", "flair": "FLAIR_TRA",
                "dwi": "DWI_TRA b1000", "sag_t1": "T1W_SAG", "cor": "3D_FLAIR_COR MPR"},
}
_CT_NAMES = {
    "siemens": {"scout": "Topogram 0.6 T20f", "axial": "Head 5.0 H30s", "cor": "Cor 3.0 H30s MPR"},
    "ge": {"scout": "SCOUT", "axial": "AXIAL 5MM BRAIN STND", "cor": "COR REFORMAT"},
    "philips": {"scout": "Surview", "axial": "Brain 5mm iDose", "cor": "Brain COR MPR"},
}
_KERNEL = {"siemens": "H30s", "ge": "STANDARD", "philips": "UB"}
_MANUFACTURER = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips"}
# sequence parameters a radiologist reads off the header: TE, TR, TI (ms), ScanningSequence
_SEQUENCE = {"T1": (12.0, 550.0, None, "SE"), "T2": (95.0, 4500.0, None, "SE"),
             "FLAIR": (120.0, 9000.0, 2500.0, "IR"), "DWI": (80.0, 5200.0, None, "EP")}
_REFORMAT = ("DERIVED", "SECONDARY", "REFORMATTED")
_LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")
BRAIN_CENTRE_RAS = (0.0, -18.0, 8.0)  # middle of a slab from the skull base to the vertex


def _series_numbers(style: str, count: int) -> list[int]:
    step = {"philips": 100, "ge": 1, "siemens": 1}[style]
    first = 101 if style == "philips" else 1
    return [first + i * step for i in range(count)]


def _bias(rng: np.random.Generator, strength: float) -> tuple[float, ...]:
    return tuple(rng.uniform(-strength, strength, size=6).round(3).tolist())


def _slab(rng: np.random.Generator, cover_mm: tuple[float, float], spacing_mm: tuple[float, float],
          slice_range=(24, 48)) -> tuple[int, float]:
    spacing = float(np.round(rng.uniform(*spacing_mm), 1))
    n = int(np.clip(round(rng.uniform(*cover_mm) / spacing), *slice_range))
    return n, spacing


def _in_plane(rng: np.random.Generator, sizes=(96, 112, 128), fov=(220.0, 250.0)) -> tuple[tuple[int, int], float]:
    n = int(rng.choice(sizes))
    return (n, n), float(np.round(rng.uniform(*fov) / n, 3))


def mr_protocol(rng: np.random.Generator) -> tuple[list[SeriesPlan], dict]:
    """A brain MRI: a 3-plane localizer, an axial FLAIR and 1-3 more of T1, T2, DWI, sagittal T1, coronal MPR."""
    style = str(rng.choice(list(_MR_NAMES)))
    names = _MR_NAMES[style]
    field_t = float(rng.choice([1.5, 3.0]))
    snr = (22.0, 40.0) if field_t == 3.0 else (16.0, 30.0)
    extras = ["t1", "t2", "dwi", "sag_t1", "cor"]
    chosen = ["flair", *rng.choice(extras, size=int(rng.integers(1, 4)), replace=False).tolist()]
    order = ["loc", "t1", "sag_t1", "t2", "flair", "dwi", "cor"]
    kinds = [k for k in order if k == "loc" or k in chosen]
    numbers = _series_numbers(style, len(kinds))
    tilt = float(np.round(rng.uniform(-10.0, 10.0), 1)) if rng.random() < 0.5 else 0.0  # AC-PC angulation
    common = {"MagneticFieldStrength": field_t, "BodyPartExamined": "BRAIN", "Manufacturer": _MANUFACTURER[style]}
    plans = []
    for kind, number in zip(kinds, numbers):
        size, pixel = _in_plane(rng)
        contrast = {"loc": "T1", "t1": "T1", "sag_t1": "T1", "t2": "T2", "flair": "FLAIR", "dwi": "DWI",
                    "cor": "FLAIR"}[kind]
        te, tr, ti, seq = _SEQUENCE[contrast]
        extra = {**common, "EchoTime": te, "RepetitionTime": tr, "ScanningSequence": seq,
                 "ProtocolName": names[kind], "SequenceName": f"{seq.lower()}{number}"}
        if ti:
            extra["InversionTime"] = ti
        plan = dict(description=names[kind], contrast=contrast, snr=float(rng.uniform(*snr)),
                    bias=_bias(rng, 0.18), gain=float(np.round(rng.uniform(300.0, 3000.0))), extra=extra)
        if kind == "loc":
            plan.update(plane="axial", size=(96, 96), pixel_mm=2.7, slices=3, slice_mm=15.0, snr=12.0,
                        image_type=_LOCALIZER, extra_planes=("sagittal", "coronal"), number=number)
            plans.append(SeriesPlan(**plan))
            continue
        if kind in ("t1", "t2", "flair"):
            n, sp = _slab(rng, (135.0, 165.0), (3.5, 6.0))
            plan.update(plane="axial", size=size, pixel_mm=pixel, slices=n, slice_mm=sp, tilt_deg=tilt)
        elif kind == "dwi":
            n, sp = _slab(rng, (135.0, 160.0), (4.0, 6.0))
            plan.update(plane="axial", size=(96, 96), pixel_mm=float(np.round(rng.uniform(2.3, 2.6), 2)),
                        slices=n, slice_mm=sp, tilt_deg=tilt, snr=float(rng.uniform(10.0, 16.0)))
            extra["DiffusionBValue"] = 1000.0
            plan["image_type"] = ("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW")
        elif kind == "sag_t1":
            n, sp = _slab(rng, (130.0, 150.0), (4.0, 5.5))
            plan.update(plane="sagittal", size=size, pixel_mm=pixel, slices=n, slice_mm=sp)
        else:  # coronal multiplanar reformat of a 3-D FLAIR: same patient space, derived images
            n, sp = _slab(rng, (150.0, 175.0), (4.0, 6.0))
            plan.update(plane="coronal", size=size, pixel_mm=pixel, slices=n, slice_mm=sp, image_type=_REFORMAT)
        plan["offset_mm"] = tuple(rng.uniform(-4.0, 4.0, size=3).round(1).tolist())
        plan["number"] = number
        plans.append(SeriesPlan(**plan))
    return plans, {"style": style, "field_strength": field_t, "manufacturer": _MANUFACTURER[style]}


def ct_protocol(rng: np.random.Generator) -> tuple[list[SeriesPlan], dict]:
    """A non-contrast head CT: a lateral scout, an axial brain series and, often, a coronal reformat."""
    style = str(rng.choice(list(_CT_NAMES)))
    names = _CT_NAMES[style]
    kinds = ["scout", "axial"] + (["cor"] if rng.random() < 0.6 else [])
    numbers = _series_numbers(style, len(kinds))
    tilt = float(np.round(rng.uniform(-15.0, 0.0), 1)) if rng.random() < 0.5 else 0.0  # orbitomeatal gantry angle
    common = {"BodyPartExamined": "HEAD", "Manufacturer": _MANUFACTURER[style], "KVP": 120,
              "ConvolutionKernel": _KERNEL[style], "XRayTubeCurrent": int(rng.integers(180, 320))}
    plans = []
    for kind, number in zip(kinds, numbers):
        extra = {**common, "ProtocolName": "ROUTINE HEAD", "AcquisitionNumber": 1 if kind != "cor" else 2}
        plan = dict(description=names[kind], contrast="CT", extra=extra, snr=float(rng.uniform(170.0, 300.0)))
        if kind == "scout":
            plan.update(plane="sagittal", size=(128, 128), pixel_mm=2.0, slices=1, slice_mm=1.0,
                        image_type=_LOCALIZER, projection=True)
        elif kind == "axial":
            size, pixel = _in_plane(rng, fov=(210.0, 240.0))
            n, sp = _slab(rng, (140.0, 165.0), (4.0, 5.0))
            plan.update(plane="axial", size=size, pixel_mm=pixel, slices=n, slice_mm=sp, tilt_deg=tilt,
                        image_type=("ORIGINAL", "PRIMARY", "AXIAL"))
        else:
            size, pixel = _in_plane(rng, fov=(210.0, 240.0))
            n, sp = _slab(rng, (150.0, 175.0), (3.5, 5.0))
            plan.update(plane="coronal", size=size, pixel_mm=pixel, slices=n, slice_mm=sp, image_type=_REFORMAT)
        plan["offset_mm"] = tuple(rng.uniform(-4.0, 4.0, size=3).round(1).tolist())
        plan["number"] = number
        plans.append(SeriesPlan(**plan))
    return plans, {"style": style, "manufacturer": _MANUFACTURER[style]}
