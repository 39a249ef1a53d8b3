"""Imports inside each package (hlip_engine, training, hlip_napari) run one way: no module imports (at top
level or inside a function) a module that imports it back. The model is the example: factory -> clip ->
vit/text, factory -> checkpoint, and neither clip.py nor checkpoint.py imports the factory; training's
config reads its recipes, and the recipes import nothing of training."""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


def _root(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin, f"{package} is not importable"
    return Path(spec.origin).parent


def _modules(package: str = "hlip_engine") -> dict[str, Path]:
    root = _root(package)
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the hlip_engine modules it imports anywhere in its body (lazy imports included)."""
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                targets = subs + ([target] if len(subs) < len(node.names) else [])
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# imports each graph must see (so that a graph that misses imports cannot pass)
SEEN = {"hlip_engine": ("hlip_engine.model.clip", {"hlip_engine.model.checkpoint", "hlip_engine.model.vit"}),
        "training": ("training.config", {"training.recipes"}),
        "hlip_napari": ("hlip_napari", set())}


@pytest.mark.parametrize("package", [
    "hlip_engine",
    "training",
    "hlip_napari",
])
def test_no_import_cycle_inside_the_package(package):
    graph = _graph(_modules(package))
    module, imported = SEEN[package]
    assert graph[module] >= imported, f"the graph misses {module}'s imports"
    assert sum(len(deps) for deps in graph.values()) >= len(graph) // 2, "the graph misses imports"
    assert _cycles(graph) == []


def test_the_import_graph_follows_relative_and_lazy_imports(tmp_path):
    """A cycle made by a relative import inside a function, in a package outside the repository."""
    pkg = tmp_path / "cyclepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import thing\n    return thing\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nthing = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = _graph(_modules("cyclepkg"))
    finally:
        sys.path.remove(str(tmp_path))
    assert graph["cyclepkg.a"] == {"cyclepkg.sub"} and "cyclepkg.a" in graph["cyclepkg.sub.b"]
    assert _cycles(graph) == [["cyclepkg.a", "cyclepkg.sub", "cyclepkg.sub.b"]]


def test_a_planted_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_model_modules_import_fresh_in_any_order():
    """Each model module imported first, in a fresh interpreter, works and gives the public names."""
    for first in ("hlip_engine.model.checkpoint", "hlip_engine.model.clip", "hlip_engine.model.factory"):
        code = (f"import {first}; from hlip_engine.model import create_model, load_model, get_config, "
                "infer_arch, HLIPModel; from hlip_engine import load_model as lm; assert lm is load_model")
        subprocess.run([sys.executable, "-c", code], check=True)
