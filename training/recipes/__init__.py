"""Training recipes as data: ``training/recipes/NAME.json`` holds the official hyper-parameters of one run.

A recipe file is a JSON object with
- ``"options"``: values for :class:`training.config.TrainConfig` fields (``python -m training.pretrain
  --recipe NAME`` starts from them; ``--config`` and flags override any of them);
- ``"official"``: the command-line values of the official run it reproduces, as written there;
- ``"source"``: the official file(s) the values come from; ``"notes"``: where ours differ and why, and
  values the official code leaves out (with the paper's value where it gives one).
"""
from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def read_recipe(name: str) -> dict:
    """The whole recipe (options, official values, source, notes) by name or from a JSON file."""
    path = RECIPE_DIR / f"{name}.json"
    if not path.is_file():
        path = Path(name)
        if not (path.suffix == ".json" and path.is_file()):
            raise ValueError(f"unknown training recipe {name!r}; known: {', '.join(list_recipes())} "
                             "(or a path to a recipe .json)")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(recipe, dict) or not isinstance(recipe.get("options"), dict):
        raise ValueError(f"{path}: a training recipe needs an 'options' object")
    return recipe


def recipe_options(name: str, known: Collection[str] | None = None) -> dict:
    """The recipe's option values (``-`` in names read as ``_``); with ``known`` (the option names of
    :class:`training.config.TrainConfig`, which ``training.config.parse_config`` passes), a name outside
    them is a ValueError naming the recipe. This package imports nothing of ``training``: the config
    reads recipes, never the other way round."""
    options = {k.replace("-", "_"): v for k, v in read_recipe(name)["options"].items()}
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise ValueError(f"training recipe {name!r}: unknown options {unknown}")
    return options
