"""Where the finding is, for lesion-guided training (an option, off by default: ``--lesion-guidance W``).

What it is. Contrastive pre-training alone taught the small demo model to tell findings apart from cues
spread over the whole study (``bench/relevance_methods.py``: blanking every token within the lesion's reach
moved the logit by 0.04, and the relevance peak hit 0 of 24 lesions). When lesion locations are known (our
phantom generator records each lesion's centre and size), this adds one auxiliary term to the CLIP loss,
"right for the right reasons" (Ross et al. 2017) applied to the attention that HLIP's relevance reads:

    guidance = -log( share of the CLS token's attention, over image tokens, that falls on lesion tokens )

averaged over heads, over the blocks at study level (where the one CLS sees every scan; with
``--lesion-guidance-levels study scan`` also each scan's own CLS copy at scan level) and over the units of
the batch that hold a focal lesion; studies without one (normal, diffuse findings) add nothing.
The model stays a CLIP model (the embeddings and the contrastive loss are unchanged); the term only says
where the evidence lies. docs/demo-model.md states which shipped model used it, and on which data.

Files. ``python -m training.lesions LIBRARY... --out lesions.json`` writes ``{study_uid: [{"centre_lps",
"radius_mm"}]}`` from phantom libraries (``studies.json``); any archive with known lesion centres can
write the same file. ``python -m training.prepare ... --lesions lesions.json`` then stores, per cached
scan, the lesions on that scan's model grid (``lesion_entries``), so any patch size can build token masks
(``token_mask``) at training time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hlip_engine.relevance.hierarchy import CLSAttentionRecorder

# how far around a lesion's rim a token still counts as on the lesion (a token spans 16-40 mm)
MARGIN_MM = 10.0


def lesion_radius_mm(details: dict) -> float:
    """Half the lesion's size (tumour, haematoma), thickness (subdural) or mean radius (infarct), in mm."""
    if "radii_mm" in details:
        return float(np.mean(details["radii_mm"]))
    return float(details.get("size_mm") or details.get("thickness_mm") or 0.0) / 2


def lesions_of_library(folder: Path) -> dict[str, list[dict]]:
    """Phantom library (``make_studies``'s ``studies.json``) -> {study_uid: [lesion]} for focal findings."""
    path = Path(folder) / "studies.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no studies.json (not a phantom library written by make_studies)")
    out = {}
    for rec in json.loads(path.read_text()):
        d = rec.get("details") or {}
        if "centre_lps" in d and lesion_radius_mm(d) > 0:
            out[rec["uid"]] = [{"centre_lps": [float(v) for v in d["centre_lps"]],
                                "radius_mm": lesion_radius_mm(d), "finding": rec["findings"][0]}]
    return out


def lesion_entries(study, prepared, lesions: list[dict]) -> list[list[dict]]:
    """Per model scan, each lesion on its model grid: ``{"centre": [z, y, x] model voxels, "radius_mm",
    "spacing_mm": [sz, sy, sx]}`` (mm per model voxel), from patient-space centres (LPS mm)."""
    out = []
    for geom, k in zip(prepared.geometry, prepared.scan_indices):
        scan = study.scans[k]
        inv = np.linalg.inv(scan.affine)
        spacing = geom.model_spacing(scan.spacing).round(4).tolist()
        entries = []
        for les in lesions:
            col, row, sl = (inv @ np.r_[np.asarray(les["centre_lps"], dtype=np.float64), 1.0])[:3]
            centre = geom.model_index(np.array([sl, row, col]))
            entries.append({"centre": [round(float(c), 3) for c in centre], "radius_mm": float(les["radius_mm"]),
                            "spacing_mm": spacing})
        out.append(entries)
    return out


def token_mask(entries: list[dict], grid: tuple[int, int, int], patch: tuple[int, int, int],
               margin_mm: float = MARGIN_MM) -> np.ndarray:
    """Tokens [d, h, w] whose centre lies within a lesion's radius + ``margin_mm``, and always the token that
    holds the lesion's centre when it lies on this grid (a thin subdural may reach no token centre)."""
    d, h, w = grid
    idx = np.stack(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij"), axis=-1)
    centres = (idx + 0.5) * np.asarray(patch, dtype=np.float64) - 0.5  # model voxels
    mask = np.zeros(grid, dtype=bool)
    for e in entries:
        mm = (centres - np.asarray(e["centre"])) * np.asarray(e["spacing_mm"])
        dist = np.linalg.norm(mm, axis=-1)
        mask |= dist <= e["radius_mm"] + margin_mm
        inside = all(-0.5 <= c <= n * p - 0.5 for c, n, p in zip(e["centre"], grid, patch))
        if inside:
            mask[np.unravel_index(int(np.argmin(dist)), grid)] = True
    return mask


class StudyAttentionTap(CLSAttentionRecorder):
    """While active, records (in the graph) the CLS attention of every block at one of ``levels``: one
    [U, heads, P + L_u] per such block (U units: the studies of the batch at study level, their scans at
    scan level, each CLS copy attending over its own unit's kept tokens)."""

    def __init__(self, visual, levels=("study",)):
        if "study" not in visual.cfg.blocks:
            raise ValueError("lesion guidance needs a study-level block (where one CLS sees every scan); "
                             f"this model's blocks are {visual.cfg.blocks}")
        blocks = [i for i, lvl in enumerate(visual.cfg.blocks) if lvl in levels]
        super().__init__(visual, blocks, in_graph=True)

    def image_attention(self) -> list:
        p = self.visual.num_prefix_tokens
        return [self.rows[b][:, :, p:] for b in self.blocks]


def kept_masks(masks, visual):
    """Token masks [B, N, d, h, w] -> [B, L] in the order of the tokens the forward kept (patch dropout
    gathers a random subset of each first-level unit's tokens; ``visual.kept_index`` records which)."""
    b = masks.shape[0]
    flat = masks.reshape(b, -1)
    index = visual.kept_index
    if index is None:
        return flat
    u0 = index.shape[0]
    return flat.reshape(u0, -1).gather(1, index).reshape(b, -1)


def guidance_loss(attention: list, masks, has_lesion) -> object:
    """The auxiliary term. attention: per guided block, [U, heads, L_u] the CLS attention over the image
    tokens each unit kept (study order, after patch dropout); masks: [B, L] bool, every kept token of
    each study; has_lesion: [B] bool. Returns a scalar tensor (0 when no unit of the batch has a lesion)."""
    import torch

    b = masks.shape[0]
    terms = []
    for a in attention:
        u = a.shape[0]  # units of this block: the studies, or their scans (consecutive tokens, study order)
        m = masks.reshape(u, -1)
        # units without a lesion token (none known, or patch dropout dropped them all) add nothing
        has = has_lesion.repeat_interleave(u // b) & m.any(dim=1)
        if not bool(has.any()):
            continue
        a = a.float().mean(dim=1)  # [U, L_u] mean over heads
        share = (a * m).sum(dim=1) / a.sum(dim=1).clamp_min(1e-12)
        terms.append(-torch.log(share.clamp_min(1e-6))[has].mean())
    if not terms:
        return attention[0].sum() * 0.0
    return torch.stack(terms).mean()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.lesions",
                                 description="Write lesions.json (study uid -> lesion centres and sizes) from "
                                             "phantom libraries, for training.prepare --lesions.")
    ap.add_argument("libraries", nargs="+", type=Path, help="folders written by hlip_engine.demo.make_studies")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    from hlip_engine.atomic import atomic_write_json

    found: dict[str, list[dict]] = {}
    try:
        for lib in args.libraries:
            found.update(lesions_of_library(lib))
    except FileNotFoundError as e:
        print(f"training.lesions: error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, found, indent=None)
    print(f"{len(found)} studies with a focal lesion -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
