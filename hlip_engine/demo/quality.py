"""How good is a model on phantom studies? Zero-shot macro AUC and free-text search precision@5.

The numbers the README quotes for the demo model come from here (``hlip demo --evaluate``), on a
phantom library drawn from a seed the model never saw in training.
"""
from __future__ import annotations

import numpy as np

from ..metrics import roc_auc
from .findings import FINDINGS

# What a radiologist would type for each finding (two phrasings each, averaged; the words come from
# the report vocabulary, chosen before any held-out evaluation); the zero-shot classifier uses them.
FINDING_PROMPTS = {
    "normal": ["no acute intracranial abnormality", "normal brain"],
    "tumour": ["mass with surrounding oedema", "intra-axial tumour with perilesional oedema"],
    "infarct": ["acute infarct", "acute ischaemic stroke in a vascular territory"],
    "haemorrhage": ["acute intracranial haemorrhage", "acute haematoma"],
    "atrophy": ["generalised cerebral atrophy", "enlarged ventricles and sulci"],
}
TEMPLATES = ["This study shows: {}."]

# Free-text searches and the finding that makes a hit relevant (location words are part of the query,
# relevance is by finding: a library of ~40 studies holds too few of any one side and lobe).
SEARCHES = [
    ("left frontal mass with surrounding oedema", "tumour"),
    ("no acute abnormality", "normal"),
    ("acute infarct in a vascular territory", "infarct"),
    ("intracranial haemorrhage", "haemorrhage"),
    ("cerebral atrophy", "atrophy"),
]


def demo_classifier(model):
    from ..zeroshot import build_classifier

    return build_classifier(model, prompts=dict(FINDING_PROMPTS), templates=TEMPLATES)


def zeroshot_auc(model, embeddings: np.ndarray, labels: list[dict]) -> dict[str, float]:
    """One-vs-rest AUC of each finding's softmax probability; "macro" = mean over findings present."""
    probs = demo_classifier(model).probabilities(embeddings).numpy()  # [S, K]
    out = {}
    for k, name in enumerate(FINDING_PROMPTS):
        y = np.array([lab[name] for lab in labels])
        if 0 < y.sum() < len(y):
            out[name] = roc_auc(y, probs[:, k])
    out["macro"] = float(np.mean([out[n] for n in FINDINGS if n in out]))
    return out


def search_precision(model, index, finding_of_uid: dict[str, str], k: int = 5, *, centre: bool = True,
                     ) -> dict[str, float]:
    """Precision@k of each free-text search in ``index``; "mean" over the searches.

    centre: queries as ``hlip search`` ranks by (centred on typical queries); False: plain cosine.
    """
    queries = [q for q, _ in SEARCHES]
    text = model.encode_query(queries, centre=centre).float().cpu().numpy()
    _, ids = index.search(text, k)
    out = {}
    for (query, finding), row in zip(SEARCHES, ids):
        hits = [m["study_uid"] for m in index.metadata([i for i in row if i >= 0])]
        out[query] = sum(finding_of_uid.get(uid) == finding for uid in hits) / k
    out["mean"] = float(np.mean(list(out.values())))
    return out


def neighbour_agreement(embeddings: np.ndarray, findings: list[str], modalities: list[str]) -> dict[str, float]:
    """What the study embeddings group by, without any text: for each study, its nearest other study
    (cosine). ``finding``: the share whose neighbour has the same finding; ``modality``: the share whose
    neighbour has the same modality. A space grouped by modality more than by finding is why free-text
    searches mix findings (the text of a query holds no modality to pick the right group).
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return {"finding": float("nan"), "modality": float("nan")}
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)
    return {"finding": float(np.mean([findings[j] == findings[i] for i, j in enumerate(nearest)])),
            "modality": float(np.mean([modalities[j] == modalities[i] for i, j in enumerate(nearest)]))}
