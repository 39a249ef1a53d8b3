"""``make_report``: the one function behind ``hlip report``, the server and the plugin.

    from hlip_engine.report import make_report
    result = make_report(study_folder, "hlip_demo.safetensors", "out/", prompt_set="pub-brain-5",
                         relevance_prompts=["glioma"], send="orthanc")
    result.sr, result.maps, result.notes, result.sent

Writes into ``out``: ``hlip_sr.dcm`` (Comprehensive 3D SR, TID 1500), one ``hlip_map_*.dcm`` Parametric Map
per relevance prompt and source series whose geometry the map can share, and ``report.json`` (what was
written, and why anything was not). ``report.json`` records a store only after the node accepted it.
Patient identifiers go into the DICOM objects (as filing requires), never into notes, JSON or logs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .compute import Analysis, analyse
from .parametric_map import build_map
from .sources import find_sources
from .sr import build_sr
from .uids import report_key

log = logging.getLogger("hlip.report")
SR_FILE = "hlip_sr.dcm"


@dataclass
class ReportResult:
    """What a report wrote (paths), what it could not (``notes``), and where it was stored (``sent``)."""

    out_dir: Path
    sr: Path
    maps: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sent: dict | None = None
    study_uid: str = ""
    findings: dict[str, float] = field(default_factory=dict)
    peaks: list[dict] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [self.sr, *self.maps]

    def to_json(self) -> dict:
        return {"study_uid": self.study_uid, "sr": self.sr.name, "maps": [p.name for p in self.maps],
                "findings": self.findings, "relevance": self.peaks, "notes": self.notes, "sent": self.sent,
                "statement": "research result, not for clinical use"}


def _series_name(scan, k: int) -> str:
    number = f"series {scan.series_number}" if scan.series_number is not None else f"scan {k}"
    return f"{number} ({scan.description})" if scan.description else number


def write_report(analysis: Analysis, out_dir: str | Path) -> ReportResult:
    """Write the SR and the relevance maps of ``analysis`` into ``out_dir`` (created when missing)."""
    from ..atomic import atomic_write, atomic_write_json
    from .uids import study_uid_for

    study = analysis.study
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = report_key(study_uid_for(study), analysis.fingerprint, analysis.spec)
    notes: list[str] = []
    dicom = any(study.scans[k].series_uid for k in analysis.scan_indices)
    sources = find_sources(study, analysis.scan_indices) if dicom else []
    if not any(s.datasets for s in sources):
        sources = []
        if analysis.relevance:
            notes.append("no spatial coordinates and no relevance map: the study has no DICOM frame of reference "
                         "(it was not read from DICOM images, e.g. NIfTI or HLIP tensors)")
    maps: list[tuple[str, object]] = []
    if sources:
        for s in sources:
            if s.problem and analysis.relevance:
                notes.append(f"relevance map of {_series_name(study.scans[s.scan_index], s.scan_index)} not written: "
                             f"{s.problem}; it is not resampled")
        n = 0
        for i, item in enumerate(analysis.relevance):
            for s in sources:
                if s.problem or s.scan_index not in (item.relevance.volume_scans or []):
                    continue
                pm = build_map(analysis, item, s, key, n)
                number = study.scans[s.scan_index].series_number
                maps.append((f"hlip_map_p{i + 1}_s{number if number is not None else s.scan_index}.dcm", pm))
                n += 1
        peak_src = {s.scan_index: s for s in sources}
        for item in analysis.relevance:
            src = peak_src.get(item.peak_scan)
            if item.peak_lps is not None and (src is None or not src.frame_of_reference):
                notes.append(f"relevance '{item.prompt}': its peak has no spatial coordinates (the peak's series "
                             "has no frame of reference)")
    sr = build_sr(analysis, sources or None, key, notes)
    sr_path = out / SR_FILE
    with atomic_write(sr_path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    map_paths = []
    for name, pm in maps:
        with atomic_write(out / name) as tmp:
            pm.save_as(tmp, enforce_file_format=True)
        map_paths.append(out / name)
    peaks = [{"prompt": it.prompt, "peak_scan": it.peak_scan, "peak_voxel": list(it.peak_voxel or []) or None,
              "peak_lps": list(it.peak_lps) if it.peak_lps is not None and sources else None,
              "scan_importance": {str(k): v for k, v in it.importance.items()}} for it in analysis.relevance]
    result = ReportResult(out_dir=out, sr=sr_path, maps=map_paths, notes=notes, study_uid=str(sr.StudyInstanceUID),
                          findings=dict(analysis.findings), peaks=peaks)
    atomic_write_json(out / "report.json", result.to_json())
    for note in notes:
        log.info("report: %s", note)
    return result


def send_report(result: ReportResult, node) -> ReportResult:
    """Store the report's files on ``node``; ``result.sent`` and report.json record it only on success."""
    from ..atomic import atomic_write_json
    from .send import send_files

    answer = send_files(result.files, node)
    result.sent = {"node": answer["node"], "protocol": answer["protocol"], "instances": len(answer["stored"]),
                   "warnings": answer["warnings"]}
    atomic_write_json(result.out_dir / "report.json", result.to_json())
    return result


def make_report(study, model, out_dir: str | Path, *, prompt_set: str | None = None, prompts=None,
                relevance_prompts=(), templates=None, template_set: str | None = None, mode: str | None = None,
                recipe: str | None = None, slices: int | None = None, method: str | None = None,
                send=None, device: str | None = None, prepared=None) -> ReportResult:
    """Zero-shot findings and relevance maps of ``study`` as DICOM objects of that study, in ``out_dir``.

    study : a Study, or a path ``hlip_engine.io.load_study`` reads (DICOM folder, NIfTI, tensors).
    model : an HLIPModel, or a checkpoint path (loaded on ``device``).
    send  : a PACS node (nodes-file name, URL or ``Node``) to store the objects on, or None.
    """
    if not isinstance(model, (str, Path)) and not hasattr(model, "prepare"):
        raise ValueError(f"make_report needs a model or a checkpoint path, got {type(model).__name__}")
    if isinstance(model, (str, Path)):
        from ..model import load_model

        model = load_model(model, device=device)
    if isinstance(study, (str, Path)):
        from ..io import load_study

        study = load_study(study)
    analysis = analyse(model, study, prompt_set=prompt_set, prompts=prompts, relevance_prompts=relevance_prompts,
                       templates=templates, template_set=template_set, mode=mode, recipe=recipe, slices=slices,
                       method=method, prepared=prepared)
    result = write_report(analysis, out_dir)
    if send is not None:
        send_report(result, send)
    return result
