"""Radiology reports for the phantom studies, in the varied phrasing of different radiologists.

A report says what the phantom holds and nothing it does not: the finding with its side, lobe, territory and
size, pertinent negatives, and an impression (sometimes led by the umbrella term radiologists use and people
search for: "Acute intracranial haemorrhage: ..."). Several templates per finding, optional header sections
and British or American spelling (one per report) keep a text model from matching one fixed sentence.
"""
from __future__ import annotations

import numpy as np

_US_SPELLING = {
    "haemorrhage": "hemorrhage", "Haemorrhage": "Hemorrhage", "haematoma": "hematoma", "Haematoma": "Hematoma",
    "haemorrhagic": "hemorrhagic", "oedema": "edema", "Oedema": "Edema", "tumour": "tumor", "Tumour": "Tumor",
    "ischaemic": "ischemic", "Ischaemic": "Ischemic", "grey": "gray", "Grey": "Gray", "centred": "centered",
    "generalised": "generalized", "Generalised": "Generalized", "visualised": "visualized",
    "characterisation": "characterization",
}
_TERRITORY_LONG = {"MCA": "middle cerebral artery", "ACA": "anterior cerebral artery",
                   "PCA": "posterior cerebral artery"}
_INDICATIONS = ("Headache.", "Dizziness.", "Confusion.", "Follow-up.", "Fall.", "Weakness.", "Seizure.",
                "Memory complaints.", "Visual disturbance.", "Rule out intracranial pathology.")


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _cm(mm: float) -> str:
    return f"{mm / 10:.1f}"


def _join(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _negatives(rng: np.random.Generator, finding: str, modality: str, dwi: bool) -> list[str]:
    """Pertinent negatives for everything the study does NOT show (diffusion only when a DWI was acquired)."""
    pool = []
    if finding != "haemorrhage":
        pool.append(_pick(rng, ["No intracranial haemorrhage.", "No acute haemorrhage.",
                                "There is no intra- or extra-axial haemorrhage."]))
        pool.append(_pick(rng, ["No extra-axial collection.", "No subdural or epidural collection."]))
    if finding != "infarct":
        pool.append(_pick(rng, ["No restricted diffusion to suggest acute infarct." if dwi
                                else "No evidence of acute territorial infarct.",
                                "No acute infarct.", "Grey-white matter differentiation is preserved."]))
    if finding not in ("tumour",):
        pool.append(_pick(rng, ["No mass lesion.", "No intracranial mass, mass effect or midline shift.",
                                "There is no space-occupying lesion."]))
    if finding != "atrophy":
        pool.append(_pick(rng, ["The ventricles and sulci are normal in size and configuration.",
                                "Ventricles and sulci are appropriate for age.", "No hydrocephalus."]))
    pool.append(_pick(rng, ["The basal cisterns are patent.", "The posterior fossa is unremarkable."]))
    if modality == "CT":
        pool.append(_pick(rng, ["The calvarium is intact.", "No skull fracture."]))
    pool.append(_pick(rng, ["The visualised paranasal sinuses and mastoid air cells are clear.",
                            "The orbits and paranasal sinuses are unremarkable."]))
    keep = rng.permutation(len(pool))[: max(2, int(rng.integers(2, len(pool) + 1)))]
    return [pool[i] for i in sorted(keep)]


def _tumour(d: dict, rng, modality: str, dwi: bool = False) -> tuple[list[str], str]:
    side, lobe, size = d["side"], d["lobe"], _cm(d["size_mm"])
    necrosis = _pick(rng, [" and central necrosis", " with a necrotic centre"]) if d.get("necrotic") else ""
    if modality == "MR":
        lines = [f"There is a {size} cm heterogeneous mass centred in the {side} {lobe} lobe{necrosis}, "
                 "with surrounding T2/FLAIR hyperintense vasogenic oedema.",
                 f"A lobulated intra-axial mass in the {side} {lobe} lobe measures {size} cm{necrosis} and is "
                 "surrounded by extensive FLAIR hyperintense oedema.",
                 f"{side.capitalize()} {lobe} lobe mass measuring approximately {size} cm with surrounding "
                 f"oedema{necrosis}."]
    else:
        lines = [f"There is a {size} cm mass in the {side} {lobe} lobe{necrosis} with surrounding hypodense "
                 "vasogenic oedema.",
                 f"Ill-defined {side} {lobe} lobe mass of about {size} cm, surrounded by low-attenuation oedema.",
                 f"A {size} cm intra-axial mass is seen in the {side} {lobe} lobe with perilesional oedema."]
    body = [_pick(rng, lines)]
    if rng.random() < 0.6:  # the phantom draws no mass effect, so the report claims none
        body.append(_pick(rng, ["No midline shift.", "No midline shift or hydrocephalus."]))
    impression = _pick(rng, [
        f"{side.capitalize()} {lobe} lobe mass with surrounding oedema, concerning for neoplasm "
        "(primary glioma or metastasis).",
        f"{size} cm {side} {lobe} mass with vasogenic oedema. Further characterisation with "
        "contrast-enhanced MRI is recommended.",
        f"Intra-axial {side} {lobe} tumour with perilesional oedema.",
    ])
    return body, impression


def _infarct(d: dict, rng, modality: str, dwi: bool = False) -> tuple[list[str], str]:
    side, terr = d["side"], d["territory"]
    long = f"{_TERRITORY_LONG[terr]} ({terr})"
    lobes = _join(d["lobes"]) + (" lobes" if len(d["lobes"]) > 1 else " lobe")
    where = f"{side} {lobes}"
    if modality == "MR":
        signal = "restricted diffusion with corresponding FLAIR hyperintensity" if dwi else "FLAIR hyperintensity"
        lines = [f"There is {signal} in the {side} {terr} territory, involving the {lobes}, consistent with an "
                 "acute infarct.",
                 f"{'FLAIR and diffusion-weighted' if dwi else 'T2/FLAIR'} hyperintensity in the {side} {long} "
                 "territory involving cortex and subcortical white matter.",
                 f"Acute ischaemic change in the {where} in a {terr} distribution, bright on FLAIR."]
    else:
        lines = [f"There is hypoattenuation with loss of grey-white matter differentiation in the {side} {terr} "
                 f"territory, involving the {lobes}.",
                 f"Wedge-shaped hypodensity in the {side} {long} territory, in keeping with an acute infarct.",
                 f"Acute ischaemic change with sulcal effacement in the {where} ({terr} territory)."]
    impression = _pick(rng, [f"Acute {side} {terr} territory infarct.",
                             f"Findings consistent with acute ischaemic stroke in the {side} {long} territory.",
                             f"Acute {side} {terr} infarct involving the {lobes}. No haemorrhagic transformation."])
    return [_pick(rng, lines)], impression


def _haemorrhage(d: dict, rng, modality: str, dwi: bool = False) -> tuple[list[str], str]:
    side = d["side"]
    if d["subtype"] == "subdural":
        thick = f"{d['thickness_mm']:.0f}"
        lines = [f"There is an acute {side} convexity subdural haematoma measuring up to {thick} mm in thickness, "
                 f"extending over the {side} {d['lobe']} region.",
                 f"Crescentic hyperdense extra-axial collection along the {side} cerebral convexity, maximal "
                 f"thickness {thick} mm, consistent with an acute subdural haematoma.",
                 f"Acute {side} holohemispheric subdural haemorrhage, up to {thick} mm thick."]
        impression = _pick(rng, [f"Acute {side} subdural haematoma.",
                                 f"Acute {side} convexity subdural haemorrhage, up to {thick} mm.",
                                 f"{side.capitalize()} acute subdural haematoma measuring {thick} mm.",
                                 f"Acute intracranial haemorrhage: {side} convexity subdural haematoma."])
        return [_pick(rng, lines)], impression
    loc = d["lobe"] if d["lobe"] == "basal ganglia" else f"{d['lobe']} lobe"
    size = _cm(d["size_mm"])
    lines = [f"There is a {size} cm acute hyperdense intraparenchymal haematoma in the {side} {loc} with a thin "
             "rim of surrounding oedema.",
             f"Acute intraparenchymal haemorrhage in the {side} {loc}, measuring {size} cm, with mild "
             "perihaematomal oedema.",
             f"A {size} cm hyperdense haematoma is present within the {side} {loc}."]
    impression = _pick(rng, [f"Acute {side} {loc} intraparenchymal haemorrhage.",
                             f"Acute intracerebral haematoma in the {side} {loc}.",
                             f"{side.capitalize()} {loc} intraparenchymal haemorrhage measuring {size} cm.",
                             f"Acute intracranial haemorrhage: {side} {loc} intraparenchymal haematoma."])
    return [_pick(rng, lines)], impression


def _atrophy(d: dict, rng, modality: str, dwi: bool = False) -> tuple[list[str], str]:
    grade = d["grade"]
    adverb = {"moderate": "moderately", "marked": "markedly"}[grade]
    lines = [f"There is {grade} generalised cerebral volume loss with ex vacuo enlargement of the ventricles and "
             "widening of the sulci.",
             f"The lateral ventricles and cortical sulci are {adverb} enlarged, consistent with global atrophy.",
             f"{grade.capitalize()} diffuse cerebral atrophy with proportionate ventricular and sulcal prominence."]
    impression = _pick(rng, [f"{grade.capitalize()} generalised cerebral atrophy.",
                             f"{grade.capitalize()} global volume loss, advanced for age.",
                             f"{grade.capitalize()} cerebral atrophy with ex vacuo ventricular enlargement."])
    return [_pick(rng, lines)], impression


def _normal(d: dict, rng, modality: str, dwi: bool = False) -> tuple[list[str], str]:
    exam = "MRI of the brain" if modality == "MR" else "non-contrast CT of the head"
    impression = _pick(rng, ["No acute intracranial abnormality.", f"Normal {exam}.",
                             "No acute intracranial process.", f"Unremarkable {exam}."])
    return [], impression


_WRITERS = {"normal": _normal, "tumour": _tumour, "infarct": _infarct, "haemorrhage": _haemorrhage,
            "atrophy": _atrophy}


def write_report(details: dict, modality: str, series: list[str], rng: np.random.Generator,
                 ) -> tuple[str, str]:
    """(full report, impression) for one study; ``series`` are the SeriesDescriptions of its scans."""
    finding = details["finding"]
    dwi = any("dwi" in s.lower() or "diff" in s.lower() for s in series)
    body, impression = _WRITERS[finding](details, rng, modality, dwi)
    findings = body + _negatives(rng, finding, modality, dwi)
    parts = []
    if rng.random() < 0.5:
        parts.append("CLINICAL HISTORY: " + _pick(rng, _INDICATIONS))
    if rng.random() < 0.6:
        what = ("Multiplanar multisequence MRI of the brain without intravenous contrast" if modality == "MR"
                else "Axial non-contrast CT of the head" + (" with coronal reformats" if len(series) > 1 else ""))
        parts.append(f"TECHNIQUE: {what}" + (f" ({', '.join(series)})." if modality == "MR" else "."))
    if rng.random() < 0.4:
        parts.append("COMPARISON: " + _pick(rng, ["None.", "No prior imaging available."]))
    parts.append("FINDINGS: " + " ".join(findings))
    parts.append("IMPRESSION: " + impression)
    text = "\n".join(parts)
    if rng.random() < 0.4:  # one radiologist in three writes American English
        for uk, us in _US_SPELLING.items():
            text = text.replace(uk, us)
            impression = impression.replace(uk, us)
    return text, impression
