"""The relevance methods by name, and each model's default (torch-free: the GUI and the client read it)."""
from __future__ import annotations

# name -> what it computes (``relevance(..., method=NAME)``, ``hlip relevance --method NAME``, the widget)
METHODS = {
    "last-block": "the official HLIP method: grad x attention of the last block's CLS row (exact, O(tokens))",
    "rollout": "Chefer et al. 2021: grad x attention rolled out over every block, CLS copies per unit",
    "guided-rollout": "rollout x the smoothed input gradient (|dlogit/dx * x|), as Guided Grad-CAM: token "
                      "evidence placed at voxel resolution",
    "mirrored-guided-rollout": "guided rollout of the study and of its left-right mirror image (mapped back), "
                               "their geometric mean: what both views agree on (twice the cost)",
}
DEFAULT_METHOD = "last-block"


def default_method(model) -> str:
    """The model's own choice (``relevance.method`` in its config, set where a method won on validation
    data), else the official last-block method (so official checkpoints get the official maps)."""
    method = ((getattr(model, "config", None) or {}).get("relevance") or {}).get("method") or DEFAULT_METHOD
    return check_method(method)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown relevance method {method!r}; known: {', '.join(METHODS)}")
    return method
