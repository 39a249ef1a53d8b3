"""How good is a model on phantom studies? Zero-shot AUC per finding and free-text search precision@5.

The numbers docs/demo-model.md quotes for the demo model come from here (``hlip demo --evaluate``) and from
``hlip evaluate demo``, on a phantom library drawn from a seed the model never saw in training. The
zero-shot figures are the "demo" protocol of :mod:`hlip_engine.evaluate` (its prompts, templates and
metrics are data in ``hlip_engine/data/evaluation_protocols.json``): one evaluation code path for the demo
and the paper's benchmarks. Phantoms, not patients: not for clinical use.
"""
from __future__ import annotations

import numpy as np

from ..evaluate.protocols import get_protocol
from .findings import FINDINGS

_DEMO = get_protocol("demo")
# What a radiologist would type for each finding (two phrasings each, averaged; the words come from
# the report vocabulary, chosen before any held-out evaluation); the zero-shot classifier uses them.
FINDING_PROMPTS = {name: list(prompts) for name, prompts in zip(_DEMO.names, _DEMO.prompts)}
TEMPLATES = list(_DEMO.templates)

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
    """The demo protocol's classifier (softmax over the five findings)."""
    from ..evaluate.scoring import protocol_classifier

    return protocol_classifier(model, _DEMO)


def zeroshot_auc(model, embeddings: np.ndarray, labels: list[dict]) -> dict[str, float]:
    """One-vs-rest AUC of each finding's softmax probability; "macro" = mean over the findings present.

    Computed by :func:`hlip_engine.evaluate.measure` under the demo protocol (``hlip evaluate demo``);
    findings with one label value in ``labels`` are left out.
    """
    import warnings

    from ..evaluate import measure

    targets = np.array([[int(lab[name]) for name in _DEMO.labels] for lab in labels])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a finding absent from a small library: left out below
        ids = [str(i) for i in range(len(labels))]
        metrics = measure(model, _DEMO, np.asarray(embeddings), targets, ids)["metrics"]
    out = {name: metrics[f"auc ({name})"] for name in _DEMO.names if not np.isnan(metrics[f"auc ({name})"])}
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
