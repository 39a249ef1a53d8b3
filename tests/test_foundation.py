"""The project's set-up: the installed console script and the napari manifest that npe2 discovers."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_hlip_help_lists_subcommands():
    out = subprocess.run([str(BIN / "hlip"), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: hlip" in out.stdout
    for command in ("inspect", "embed", "zeroshot", "search", "index"):
        assert command in out.stdout, f"`hlip --help` does not list {command}"


def test_npe2_discovers_and_validates_the_plugin():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    assert "hlip-napari" in pm._manifests, "npe2 did not discover hlip-napari through its entry point"
    manifest = pm.get_manifest("hlip-napari")
    assert manifest.contributions.readers and manifest.contributions.widgets
    # the installed package exposes the top-level napari.yaml itself, not a drifting copy
    import hlip_napari

    exposed = Path(hlip_napari.__file__).parent / "napari.yaml"
    assert exposed.read_text() == (ROOT / "napari.yaml").read_text()
    out = subprocess.run([str(BIN / "npe2"), "validate", "hlip-napari"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "valid" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


def test_packages_import_without_gui_or_torch_cost():
    """hlip_engine must not import napari or Qt; importing it must stay cheap (torch loads lazily)."""
    code = "import sys, hlip_engine; print('napari' in sys.modules, 'qtpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "False"], out.stdout + out.stderr


def test_stable_api_names_stay_functions_after_their_modules_load():
    """``hlip_engine.preprocess`` etc. are the stable API functions, even once every submodule is imported."""
    code = ("import hlip_engine, hlip_engine.preprocessing, hlip_engine.io, hlip_engine.model, hlip_engine.index\n"
            "names = ['load_study', 'discover', 'preprocess', 'load_model', 'create_model', 'recipe_for']\n"
            "print(all(callable(getattr(hlip_engine, n)) and not isinstance(getattr(hlip_engine, n), type(hlip_engine))"
            " for n in names), hlip_engine.StudyIndex.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "StudyIndex"], out.stdout + out.stderr
