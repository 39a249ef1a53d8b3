"""The plugin's only needs outside napari's public API (hlip_napari/_napari_compat.py): each fails here,
loudly, when a napari release changes it, instead of the plugin silently losing the behaviour."""
from __future__ import annotations

import re
import subprocess
import sys
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


def test_nothing_outside_the_compat_module_reaches_into_napari_private_code():
    """No napari private module, no private attribute of napari's window or viewer, no process-wide switch."""
    pattern = (r"(?<![\w])napari\._|_qt_viewer|_qt_window|_wrapped_dock_widgets|gc\.freeze|setswitchinterval|"
               r"sys\._getframe|_activate_on_insert|warnings\.filterwarnings|extension2reader\s*=")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_napari_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line) and "prefer_for_studies" not in line:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    allowed = {"hlip_napari/_reader.py"}  # napari's reader preferences, set once at activation (public settings)
    offenders = [o for o in offenders if not (o.split(":")[0] in allowed and "extension2reader" in o)]
    assert offenders == []


def test_the_check_above_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from napari._qt.qt_viewer import QtViewer\n")
    result = subprocess.run([sys.executable, "-c", (
        "import re,sys;t=open(sys.argv[1]).read();"
        "sys.exit(0 if re.search(r'(?<![\\w])napari\\._', t) else 1)"), str(bad)])
    assert result.returncode == 0
