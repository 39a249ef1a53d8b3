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
from dataclasses import dataclass
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


# which patient axis a panel shows upright, by preference (S/I, then A/P, then L/R), and the way it runs:
# down the panel the patient runs inferior (LPS -z) / posterior (+y); across it right -> left (+x),
# anterior -> posterior (+y). So: vertex up, nose up on an axial, patient's right on the viewer's left.
_UPRIGHT = {2: 0, 1: 1, 0: 2}
_SIGN = {0: 1.0, 1: 1.0, 2: -1.0}
_PLANE = {frozenset({0, 1}): "axial", frozenset({0, 2}): "coronal", frozenset({1, 2}): "sagittal"}
_ENDS = {0: ("R", "L"), 1: ("A", "P"), 2: ("S", "I")}  # (where an upright panel starts, where it ends)


@dataclass
class PeakPanel:
    """One panel of :func:`save_peak_view`, ready to draw with ``imshow`` (row 0 at the top).

    image / overlay: 2-D, in display order (upright: superior, else anterior, at the top; the patient's
    right, else anterior, on the left). peak / truth: (y, x) in those display indices; truth_radii:
    (half-height, half-width) of the known lesion's cut in display indices. aspect: row / column spacing.
    letters: the patient directions at the (top, bottom, left, right) edges, e.g. ("S", "I", "R", "L").
    """

    image: np.ndarray
    overlay: np.ndarray
    peak: tuple[float, float]
    aspect: float
    title: str
    plane: str
    letters: tuple[str, str, str, str]
    truth: tuple[float, float] | None = None
    truth_radii: tuple[float, float] | None = None


def _upright(scan, shown: tuple[int, int]) -> tuple[bool, bool, bool, tuple[str, str, str, str]]:
    """(transpose, flip rows, flip columns, edge letters) that turn a plane of voxel axes ``shown`` (y, x)
    upright."""
    def patient_axis(axis: int) -> tuple[int, float]:
        d = np.asarray(scan.direction)[:, 2 - axis]  # direction columns are (column, row, slice)
        p = int(np.argmax(np.abs(d)))
        return p, float(d[p])

    (py, sy), (px, sx) = patient_axis(shown[0]), patient_axis(shown[1])
    transpose = _UPRIGHT[px] < _UPRIGHT[py]
    if transpose:
        (py, sy), (px, sx) = (px, sx), (py, sy)
    return transpose, sy * _SIGN[py] < 0, sx * _SIGN[px] < 0, (*_ENDS[py], *_ENDS[px])


def peak_panels(scan, volume: np.ndarray, voxel, *, truth_lps=None, truth_radius_mm: float | None = None) -> \
        list[PeakPanel]:
    """The three planes through ``voxel`` (slice, row, column) of ``scan``: its own slice, then the two
    orthogonal reformats, each turned upright for a reader (see :class:`PeakPanel`), whatever the order of
    the scan's slices, rows and columns in the patient. ``truth_lps`` / ``truth_radius_mm``: a known lesion
    (phantoms), cut by each plane that passes within its radius."""
    s, r, c = (int(v) for v in voxel)
    img = np.asarray(scan.voxels, dtype=np.float32)
    vol = np.asarray(volume, dtype=np.float32)
    sp = scan.spacing  # (slice, row, column) mm
    truth_idx = None
    if truth_lps is not None:
        col, row, sl = (np.linalg.inv(scan.affine) @ np.r_[np.asarray(truth_lps, float), 1.0])[:3]
        truth_idx = np.array([sl, row, col])
    cuts = [(0, s, (1, 2), f"slice {s + 1} of {img.shape[0]}"), (1, r, (0, 2), f"row {r + 1} (reformat)"),
            (2, c, (0, 1), f"column {c + 1} (reformat)")]
    direction = np.asarray(scan.direction)
    panels = []
    for cut, at, shown, name in cuts:
        take = [slice(None)] * 3
        take[cut] = at
        im, ov = img[tuple(take)], vol[tuple(take)]
        point = np.array([(s, r, c)[shown[0]], (s, r, c)[shown[1]]], dtype=float)
        spacing = np.array([sp[shown[0]], sp[shown[1]]])
        truth = radii = None
        if truth_idx is not None and truth_radius_mm:
            off = (truth_idx[cut] - at) * sp[cut]  # mm from this plane to the lesion centre
            if abs(off) < truth_radius_mm:
                rr = float(np.sqrt(truth_radius_mm ** 2 - off ** 2))
                truth = np.array([truth_idx[shown[0]], truth_idx[shown[1]]], dtype=float)
                radii = rr / spacing
        transpose, flip_y, flip_x, letters = _upright(scan, shown)
        if transpose:
            im, ov, point, spacing = im.T, ov.T, point[::-1], spacing[::-1]
            truth, radii = (truth[::-1] if truth is not None else None), (radii[::-1] if radii is not None else None)
        for axis, flip in ((0, flip_y), (1, flip_x)):
            if flip:
                n = im.shape[axis]
                im, ov = np.flip(im, axis), np.flip(ov, axis)
                point[axis] = n - 1 - point[axis]
                if truth is not None:
                    truth[axis] = n - 1 - truth[axis]
        plane = _PLANE.get(frozenset(int(np.argmax(np.abs(direction[:, 2 - a]))) for a in shown), "oblique")
        panels.append(PeakPanel(np.ascontiguousarray(im), np.ascontiguousarray(ov), (float(point[0]), float(point[1])),
                                float(spacing[0] / spacing[1]), f"{plane}: {name}", plane, letters,
                                None if truth is None else (float(truth[0]), float(truth[1])),
                                None if radii is None else (float(radii[0]), float(radii[1]))))
    return panels


def save_peak_view(rel: Relevance, study, path: str | Path, *, threshold: float = 0.25,
                   truth_lps=None, truth_radius_mm: float | None = None, title: str | None = None) -> Path:
    """PNG of what a reader checks first: the most relevant scan at its peak, in its own plane.

    Three panels through the peak voxel (the scan's own slice, and the two orthogonal reformats of the
    scan), each upright as a reader hangs it (:func:`peak_panels`: superior at the top of a coronal or
    sagittal, anterior at the top of an axial, the patient's right on the left), grey scan + relevance
    (normalised to the study maximum, shown >= ``threshold``) + a cross at the peak. ``truth_lps`` /
    ``truth_radius_mm``: a known lesion (phantoms) drawn as a dashed outline where it cuts each panel
    (a circle in millimetres), so the picture says whether the map lands on it.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    found = rel.peak()
    if found is None:
        raise ValueError("this relevance has no maps on the scans' voxels (computed from a bare tensor)")
    k, voxel = found
    scan = study.scans[k]
    vol = rel.display_volumes()[list(rel.volume_scans).index(k)]
    img = scan.voxels.astype(np.float32)
    lo, hi = (0.0, 80.0) if scan.modality == "CT" else np.percentile(img, [1, 99.5])  # CT: brain window
    panels = peak_panels(scan, vol, voxel, truth_lps=truth_lps, truth_radius_mm=truth_radius_mm)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, panel in zip(axes, panels):
        ax.imshow(panel.image, cmap="gray", vmin=lo, vmax=hi, aspect=panel.aspect, interpolation="nearest",
                  origin="upper")
        ax.imshow(np.ma.masked_less(panel.overlay, threshold), cmap="jet", vmin=0, vmax=1, alpha=0.45,
                  aspect=panel.aspect, interpolation="bilinear", origin="upper")
        ax.plot(panel.peak[1], panel.peak[0], "+", color="white", markersize=16, markeredgewidth=2)
        if panel.truth is not None:
            ax.add_patch(Ellipse((panel.truth[1], panel.truth[0]), 2 * panel.truth_radii[1],
                                 2 * panel.truth_radii[0], fill=False, color="lime", linewidth=1.5,
                                 linestyle="--"))
        height, width = panel.image.shape
        ax.set_xlim(-0.5, width - 0.5)  # the image, not the outline or the cross, sets the frame
        ax.set_ylim(height - 0.5, -0.5)  # row 0 at the top
        for (x, y, ha, va), letter in zip(((0.5, 0.98, "center", "top"), (0.5, 0.02, "center", "bottom"),
                                           (0.02, 0.5, "left", "center"), (0.98, 0.5, "right", "center")),
                                          panel.letters):
            ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="#ffd54f", fontsize=10,
                    fontweight="bold")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    order, totals = rel.source_importance()
    share = float(totals[order.index(k)])
    head = title or f"relevance of {rel.prompt!r} ({rel.method})"
    note = "  dashed circle: the known lesion" if truth_lps is not None else ""
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
