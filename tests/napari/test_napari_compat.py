"""The plugin's only needs outside napari's public API (hlip_napari/_napari_compat.py): each fails here,
loudly, when a napari release changes it, instead of the plugin silently losing the behaviour."""
from __future__ import annotations

import re
from pathlib import Path

import hlip_napari
from hlip_napari._napari_compat import NAPARI_TESTED, napari_version, wheel_slice_callbacks

PACKAGE = Path(hlip_napari.__file__).parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_this_napari_is_one_the_plugin_is_tested_on():
    low, high = (_version(v) for v in NAPARI_TESTED)
    assert low <= napari_version() <= high, (
        f"napari {napari_version()} is outside the range the plugin is tested on {NAPARI_TESTED}: check each "
        "item of hlip_napari/_napari_compat.py against it, then widen the range (and pyproject's)")


def test_pyproject_declares_the_tested_range():
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    declared = re.search(r'"napari>=([0-9.]+),<([0-9.]+)"', text)
    assert declared, "pyproject declares no napari range"
    assert declared.group(1) == NAPARI_TESTED[0]
    assert _version(NAPARI_TESTED[1]) < _version(declared.group(2))


def test_napari_has_exactly_one_wheel_slice_callback_to_take_over(make_napari_viewer):
    viewer = make_napari_viewer()
    found = wheel_slice_callbacks(viewer)
    assert len(found) == 1, ("napari's viewer no longer has its Ctrl+wheel slider callback by that name: the "
                             "PACS mouse mode would step slices and zoom at once. Update _napari_compat.py")
    assert found[0].__module__.startswith("napari.")


# what the plugin must not use outside the compat module, spelled in pieces so that this file itself does not
# match a plain grep for them
FORBIDDEN = [r"(?<![\w])napari\._", "_qt_" + "viewer", "_qt_" + "window", "_wrapped_" + "dock_widgets",
             r"gc\." + "freeze", "setswitch" + "interval", r"sys\._" + "getframe", "_activate_" + "on_insert",
             r"warnings\." + "filterwarnings"]


def offenders(root: Path) -> list[str]:
    """Lines under ``root`` (the compat module aside) that use one of :data:`FORBIDDEN`."""
    pattern = re.compile("|".join(FORBIDDEN))
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_napari_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                out.append(f"{path.relative_to(root.parent)}:{n}: {line.strip()}")
    return out


def test_nothing_outside_the_compat_module_reaches_into_napari_private_code():
    """No napari private module, no private attribute of napari's window or viewer, no process-wide switch."""
    assert offenders(PACKAGE) == []


def test_the_check_above_can_fail(tmp_path):
    pkg = tmp_path / "plugin"
    pkg.mkdir()
    (pkg / "widget.py").write_text("from napari." + "_qt.qt_viewer import QtViewer\nimport gc\ngc." + "freeze()\n")
    (pkg / "_napari_compat.py").write_text("from napari." + "_qt import x\n")  # allowed there
    assert [line.split(":")[1] for line in offenders(pkg)] == ["1", "3"]
