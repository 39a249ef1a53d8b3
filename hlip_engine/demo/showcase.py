"""``hlip demo``: the whole product on phantom studies, from nothing, in a few minutes on a laptop.

library (phantoms, DICOM) -> index (demo model) -> three free-text searches -> zero-shot on one study
-> relevance map on one study (PNG overlay) -> optionally the quality report and napari.
The demo model knows phantoms only: it is not a medical device and not for clinical use.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .quality import (
    FINDING_PROMPTS,
    SEARCHES,
    TEMPLATES,
    demo_classifier,
    neighbour_agreement,
    search_precision,
    zeroshot_auc,
)

DEMO_SEED = 2026  # the demo library's seed: never used to train the demo model (see docs/demo-model.md)
DEMO_MODEL = Path(__file__).resolve().parents[1] / "weights" / "hlip_demo.safetensors"


def ensure_library(folder: Path, n: int, seed: int = DEMO_SEED) -> list[dict]:
    """The phantom library: generated once, then reused (studies.json records what is there)."""
    records_file = folder / "studies.json"
    if records_file.is_file():
        records = json.loads(records_file.read_text())
        if len(records) == n and all(r.get("seed") == seed and Path(r["path"]).is_dir() for r in records):
            return records
    from . import make_studies

    print(f"Generating {n} phantom studies in {folder} ...")
    return make_studies(folder, n, seed, progress=True)


def ensure_index(library: Path, model_path: Path, index_dir: Path):
    """The demo index of ``library``: built once with the library's reports (``reports.json``), so that every
    search hit carries its impression, then reused. Rebuilt when another model built it, when it is
    unreadable, or when it was built without the reports (a demo index of an older version)."""
    from ..index import StudyIndex
    from ..index.embed_pipeline import build_library
    from ..index.files import IndexFormatError

    reports = library / "reports.json"
    reports = reports if reports.is_file() else None

    def build(rebuild: bool):
        return build_library(library, model_path, index_dir, resume=not rebuild, rebuild=rebuild, workers=2,
                             progress=True, log=lambda *a: None, reports=reports)

    rebuild = reports is not None and _lacks_impressions(index_dir)
    if rebuild:
        print(f"  rebuilding the demo index at {index_dir} (built without the library's reports)")
    try:
        report = build(rebuild=rebuild)
    except IndexFormatError:  # the demo's own index, built with another model (an update) or unreadable
        print(f"  rebuilding the demo index at {index_dir} (built with another model, or unreadable)")
        report = build(rebuild=True)
    if getattr(report, "skipped", None):
        print(f"  skipped {len(report.skipped)} studies (see `hlip index` report)")
    return StudyIndex.open(index_dir)


def _lacks_impressions(index_dir: Path) -> bool:
    """Whether a published index at ``index_dir`` holds a study without an impression (False: none there)."""
    from ..index import StudyIndex

    try:
        with StudyIndex.open(index_dir) as index:
            return any(not (meta or {}).get("impression") for meta in index.metadata(list(range(len(index)))))
    except Exception:  # noqa: BLE001 - nothing published yet, or unreadable: the build decides what to do
        return False


def _headline(record: dict) -> str:
    finding = record["findings"][0] if record["findings"] else "normal"
    details = record.get("details") or {}
    where = " ".join(str(details[k]) for k in ("side", "lobe", "territory") if details.get(k))
    return f"{record['modality']} {finding}{(' (' + where + ')') if where else ''}"


def run(out: Path, n: int = 40, evaluate: bool = False, gui: bool = False, model_path: Path | None = None) -> dict:
    import torch

    from ..io import load_study
    from ..model import load_model

    t0 = time.perf_counter()
    model_path = Path(model_path or DEMO_MODEL)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: the demo model is missing (it ships in the package; reinstall)")
    out.mkdir(parents=True, exist_ok=True)
    records = ensure_library(out / "library", n)
    by_uid = {r["uid"]: r for r in records}
    model = load_model(model_path, device="cpu")
    print(f"Demo model: {model_path.name} ({model.config.get('name')}), trained on phantoms only - not for clinical use.")
    print("Indexing the library ...")
    index = ensure_index(out / "library", model_path, out / "index")
    print(f"  {len(index)} studies in the index at {out / 'index'}")

    from ..search import search_document

    results: dict = {"searches": {}}
    print("\nFree-text search (top 5; the truth in brackets, then the report's impression):")
    for query, _ in SEARCHES[:3]:
        doc = search_document(index, model, text=query, k=5)  # what `hlip search --json` prints
        print(f'  "{query}"')
        hits = []
        for hit in doc["hits"]:
            rec = by_uid.get(hit["study_uid"], {})
            truth = _headline(rec) if rec else "?"
            impression = hit.get("impression") or ""
            print(f"    {hit['score']:6.3f}  {hit.get('date', '')}  {hit.get('description', '')[:28]:28s}  [{truth}]"
                  f"  {impression[:60]}")
            hits.append({"score": float(hit["score"]), "study_uid": hit["study_uid"], "truth": truth,
                         "impression": impression})
        results["searches"][query] = hits

    # zero-shot and relevance on the first tumour study (a finding with a place to point at)
    target = next((r for r in records if r["findings"] == ["tumour"]), records[0])
    study = load_study(target["path"])
    prepared = model.prepare(study)
    with torch.no_grad():
        emb = model.encode_image(torch.as_tensor(prepared.tensor)[None])[0].float().cpu()
        probs = demo_classifier(model).classify(emb)
    from ..zeroshot import bar_chart, text_bars

    print(f"\nZero-shot on {Path(target['path']).name} [{_headline(target)}]:")
    print(text_bars(probs))
    bar_chart(probs, out / "zeroshot.png", title=f"Zero-shot: {Path(target['path']).name}")
    results["zeroshot"] = {"study": target["path"], "truth": _headline(target), "probabilities": probs}

    from ..relevance import relevance
    from ..relevance.export import save_montage, save_peak_view

    prompt = FINDING_PROMPTS["tumour"][0]
    rel = relevance(model, prepared, FINDING_PROMPTS["tumour"], templates=TEMPLATES)
    png, montage = out / "relevance.png", out / "relevance_montage.png"
    details = target.get("details") or {}
    truth = details.get("centre_lps")
    radius = float(details["size_mm"]) / 2 if "size_mm" in details else None
    save_peak_view(rel, study, png, truth_lps=truth, truth_radius_mm=radius,
                   title=f'relevance of "{prompt}" ({rel.method}) on {_headline(target)}')
    save_montage(rel, montage, labels=list(prepared.labels) or None)
    k, voxel = rel.peak()
    where = study.scans[k].world(voxel)
    miss = float(np.linalg.norm(where - np.asarray(truth))) if truth is not None else None
    print(f'\nRelevance of "{prompt}" ({rel.method}): most relevant scan {k} ({study.scans[k].description}), '
          f"peak at slice {voxel[0] + 1}" + (f", {miss:.0f} mm from the lesion centre" if miss is not None else "")
          + f"; written to {png} and {montage}")
    results["relevance"] = {"png": str(png), "montage": str(montage), "method": rel.method,
                            "scan_importance": [float(x) for x in rel.scan_importance],
                            "peak_scan": k, "peak_voxel": list(voxel), "peak_to_lesion_mm": miss}

    if evaluate:
        with torch.no_grad():
            results["quality"] = evaluate_library(model, index, records)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "demo_results.json").write_text(json.dumps(results, indent=1))
    print(f"\nDone in {results['seconds']} s. Results: {out / 'demo_results.json'}")
    if gui:
        import napari

        import hlip_napari

        print("Opening napari with the study, the index and the model ...")
        hlip_napari.launch(study=target["path"], index=str(out / "index"), model=str(model_path))
        napari.run()
    return results


def evaluate_library(model, index, records: list[dict], seed: int = DEMO_SEED) -> dict:
    """Zero-shot macro AUC and search precision@5 on this (held-out) library."""
    uids = [r["uid"] for r in records]
    ids = [index.find(study_uid=u) for u in uids]
    keep = [i for i, row in enumerate(ids) if row is not None]
    emb = index.vectors([ids[i] for i in keep])
    labels = [records[i]["labels"] for i in keep]
    auc = zeroshot_auc(model, emb, labels)
    finding_of = {r["uid"]: (r["findings"][0] if r["findings"] else "normal") for r in records}
    p5 = search_precision(model, index, finding_of)
    plain = search_precision(model, index, finding_of, centre=False)
    near = neighbour_agreement(emb, [finding_of[uids[i]] for i in keep], [records[i]["modality"] for i in keep])
    print(f"\nQuality on {len(keep)} held-out phantom studies (seed {seed}, never trained on):")
    print("  zero-shot AUC  " + "  ".join(f"{k} {v:.3f}" for k, v in auc.items()))
    print("  search precision@5  " + "  ".join(f'"{k}" {v:.2f}' for k, v in p5.items() if k != "mean")
          + f"  mean {p5['mean']:.2f} (plain cosine, not centred on typical queries: {plain['mean']:.2f})")
    print(f"  nearest study (image embeddings): same finding {near['finding']:.2f}, "
          f"same modality {near['modality']:.2f}")
    return {"zeroshot_auc": auc, "search_precision_at_5": p5, "search_precision_at_5_plain": plain,
            "nearest_study": near, "studies": len(keep)}
