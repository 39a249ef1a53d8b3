"""Class vectors for a protocol (the engine's one zero-shot classifier) and the scores of embeddings.

Class vectors follow open_clip's ``build_zero_shot_classifier``: every template filled with the class
text, encoded, L2-normalised, averaged over templates and re-normalised (``hlip_engine.zeroshot``).
Scores per the protocol's ``score``:
  pair-softmax   per class, softmax of scale * (image . negative, image . positive): P(positive);
  cosine         image . class vector (the 2026 scripts score multi-label benchmarks this way);
  scaled-logits  scale * image . class vector (the metric set takes softmaxes over class subsets);
  softmax        softmax over all classes of scale * image . class vector.
scale = exp(logit_scale) of the model, capped at 100 as in training.
"""
from __future__ import annotations

import numpy as np

from ..zeroshot import Classifier, build_classifier


def protocol_classifier(model, protocol) -> Classifier:
    """The protocol's prompts and templates through :func:`hlip_engine.zeroshot.build_classifier`."""
    templates = list(protocol.templates)
    if protocol.score == "pair-softmax":
        prompts = {n: tuple(p) for n, p in zip(protocol.names, protocol.prompts)}
        return build_classifier(model, prompts=prompts, templates=templates, mode="binary")
    prompts = {n: ([p] if isinstance(p, str) else list(p)) for n, p in zip(protocol.names, protocol.prompts)}
    return build_classifier(model, prompts=prompts, templates=templates, mode="softmax")


def protocol_scores(classifier: Classifier, embeddings, score: str) -> tuple[np.ndarray, np.ndarray | None]:
    """[S, E] normalised embeddings -> (scores [S, K], 0/1 predictions [S, K] for pair scores else None)."""
    import torch

    emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    w = classifier.weights.float()
    if score == "pair-softmax":
        logits = classifier.scale * torch.einsum("be,kse->bks", emb, w)  # [S, K, 2]
        probs = logits.softmax(dim=-1)
        return probs[..., 1].double().numpy(), probs.argmax(dim=-1).numpy().astype(int)
    cosine = emb @ w.T
    if score == "cosine":
        return cosine.double().numpy(), None
    if score == "scaled-logits":
        return (classifier.scale * cosine).double().numpy(), None
    if score == "softmax":
        return (classifier.scale * cosine).softmax(dim=-1).double().numpy(), None
    raise ValueError(f"unknown score {score!r}")
