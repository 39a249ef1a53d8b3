"""Relevance maps to files a radiologist can open anywhere: NIfTI overlays, a PNG montage, a JSON summary.

NIfTI: one file per source scan, on that scan's own voxel grid. ``Scan.affine`` maps (column, row, slice)
to LPS millimetres; NIfTI wants RAS, so x and y flip sign, and the array is written (column, row, slice)
so that the NIfTI voxel axes are the ones the affine describes. Any viewer then overlays it on the
scan's DICOM/NIfTI without resampling.

Montage: one row per model scan, one column per token slab, sampled at the slab centre (what the
official demo shows), the map thresholded and coloured over the grey model input. The colour scale is
shared by the whole study (normalised by the study maximum), so a pale scan is a scan the model did
not use, not an artefact of per-image stretching.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .maps import Relevance

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SCANS_PER_PAGE = 12  # a 40-scan study gives 4 readable pages rather than one poster


def _safe_name(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())
    return keep.strip("_")[:40] or "scan"


def _atomic_write(path: Path, write) -> None:
    with atomic_write(path) as tmp:
        write(tmp)


def save_nifti(volume: np.ndarray, scan, path: str | Path) -> Path:
    """One map shaped like ``scan.voxels`` (slices, rows, columns) -> ``path`` (.nii or .nii.gz), RAS affine."""
    import nibabel as nib

    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape != tuple(scan.voxels.shape):
        raise ValueError(f"{path}: map shape {volume.shape} differs from the scan's voxels {scan.voxels.shape}")
    path = Path(path)
    img = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), LPS_TO_RAS @ scan.affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"HLIP relevance"
    _atomic_write(path, lambda p: nib.save(img, str(p)))
    return path


def save_montage(rel: Relevance, path: str | Path, *, threshold: float = 0.25, scans: list[int] | None = None,
                 labels: list[str] | None = None) -> Path:
    """PNG: rows = model scans (``scans``, default all), columns = slab centres; overlay where map >= threshold.

    Needs ``rel.slab_images`` (set by :func:`relevance`): the grey model input at each slab centre.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if rel.slab_images is None:
        raise ValueError("this relevance carries no images to draw on (slab_images is None)")
    scans = list(range(rel.tokens.shape[0])) if scans is None else scans
    centres = rel.slab_centres
    overlays = {i: rel.upsampled(i)[centres] for i in scans}  # [d, H, W] each
    vmax = max(float(o.max()) for o in overlays.values()) or 1.0
    importance = rel.scan_importance
    d = len(centres)
    fig, axes = plt.subplots(len(scans), d, figsize=(1.9 * d, 2.0 * len(scans)), squeeze=False)
    for r, i in enumerate(scans):
        for c in range(d):
            ax = axes[r, c]
            ax.imshow(rel.slab_images[i, c], cmap="gray")
            m = overlays[i][c] / vmax
            ax.imshow(np.ma.masked_less(m, threshold), cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"slice {centres[c]}", fontsize=8)
        name = labels[r] if labels else f"scan {i}"
        axes[r, 0].set_ylabel(f"{name}\n{100 * importance[i]:.1f}%", fontsize=8)
    fig.suptitle(f"relevance: {rel.prompt!r}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    _atomic_write(path, lambda p: fig.savefig(p, dpi=80, format="png"))
    plt.close(fig)
    return path


def save_peak_view(rel: Relevance, study, path: str | Path, *, threshold: float = 0.25,
                   truth_lps=None, truth_radius_mm: float | None = None, title: str | None = None) -> Path:
    """PNG of what a reader checks first: the most relevant scan at its peak, in its own plane.

    Three panels through the peak voxel (the scan's own slice, and the two orthogonal reformats of the
    scan), grey scan + relevance (normalised to the study maximum, shown >= ``threshold``) + a cross at the
    peak. ``truth_lps`` / ``truth_radius_mm``: a known lesion (phantoms) drawn as a circle where it cuts
    each panel, so the picture says whether the map lands on it.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    found = rel.peak()
    if found is None:
        raise ValueError("this relevance has no maps on the scans' voxels (computed from a bare tensor)")
    k, (s, r, c) = found
    scan = study.scans[k]
    vol = rel.display_volumes()[list(rel.volume_scans).index(k)]
    img = scan.voxels.astype(np.float32)
    lo, hi = (0.0, 80.0) if scan.modality == "CT" else np.percentile(img, [1, 99.5])  # CT: brain window
    sp = scan.spacing  # (slice, row, column) mm
    truth_idx = None
    if truth_lps is not None:
        col, row, sl = (np.linalg.inv(scan.affine) @ np.r_[np.asarray(truth_lps, float), 1.0])[:3]
        truth_idx = np.array([sl, row, col])
    # (image, overlay, peak (y, x), extent-aspect, the voxel axes shown (y, x), the axis cut, its index)
    panels = [(img[s], vol[s], (r, c), sp[1] / sp[2], (1, 2), 0, s, f"slice {s + 1} of {img.shape[0]}"),
              (img[:, r], vol[:, r], (s, c), sp[0] / sp[2], (0, 2), 1, r, f"row {r + 1} (reformat)"),
              (img[:, :, c], vol[:, :, c], (s, r), sp[0] / sp[1], (0, 1), 2, c, f"column {c + 1} (reformat)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (im, ov, (py, px), aspect, shown, cut, at, name) in zip(axes, panels):
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(np.ma.masked_less(ov, threshold), cmap="jet", vmin=0, vmax=1, alpha=0.45, aspect=aspect,
                  interpolation="bilinear")
        ax.plot(px, py, "+", color="white", markersize=16, markeredgewidth=2)
        if truth_idx is not None and truth_radius_mm:
            off = (truth_idx[cut] - at) * sp[cut]  # mm from this panel's plane to the lesion centre
            if abs(off) < truth_radius_mm:
                rr = float(np.sqrt(truth_radius_mm ** 2 - off ** 2))
                ax.add_patch(Circle((truth_idx[shown[1]], truth_idx[shown[0]]), rr / sp[shown[1]],
                                    fill=False, color="lime", linewidth=1.5, linestyle="--"))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    order, totals = rel.source_importance()
    share = float(totals[order.index(k)])
    head = title or f"relevance of {rel.prompt!r} ({rel.method})"
    note = "  dashed circle: the known lesion" if truth_idx is not None else ""
    fig.suptitle(f"{head}\nmost relevant scan: {scan.description or f'scan {k}'} ({100 * share:.0f}% of the "
                 f"relevance); +: peak{note}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    _atomic_write(path, lambda p: fig.savefig(p, dpi=80, format="png"))
    plt.close(fig)
    return path


def export(rel: Relevance, out_dir: str | Path, *, study=None, threshold: float = 0.25) -> list[Path]:
    """Write ``relevance.json``, ``montage[_k].png`` and, with ``study``, one ``scanNN_<desc>.nii.gz`` per used
    scan and ``peak.png`` (:func:`save_peak_view`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    labels = [f"{i}: {name}" for i, name in enumerate(rel.meta.get("labels") or [])] or None
    if labels is None and study is not None and rel.scan_indices is not None:
        labels = [f"{i}: {_safe_name(study.scans[k].description or f'scan {k}')}"
                  for i, k in enumerate(rel.scan_indices)]
    summary = rel.summary()
    if study is not None and rel.volumes is not None:
        files = []
        for k, vol in zip(rel.volume_scans, rel.volumes):
            scan = study.scans[k]
            p = out / f"scan{k:02d}_{_safe_name(scan.description or scan.series_uid or 'scan')}.nii.gz"
            written.append(save_nifti(vol, scan, p))
            files.append(p.name)
        summary["nifti"] = files
    if rel.slab_images is not None:
        n = rel.tokens.shape[0]
        pages = [list(range(s, min(s + SCANS_PER_PAGE, n))) for s in range(0, n, SCANS_PER_PAGE)]
        for j, page in enumerate(pages):
            name = "montage.png" if len(pages) == 1 else f"montage_{j + 1}.png"
            written.append(save_montage(rel, out / name, threshold=threshold, scans=page,
                                        labels=[labels[i] for i in page] if labels else None))
        summary["montage"] = [p.name for p in written if p.suffix == ".png"]
    if study is not None and rel.volumes:
        written.append(save_peak_view(rel, study, out / "peak.png", threshold=threshold))
        summary["peak_view"] = "peak.png"
    js = out / "relevance.json"
    _atomic_write(js, lambda p: p.write_text(json.dumps(summary, indent=1)))
    written.append(js)
    return written
