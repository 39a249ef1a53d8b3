"""``hlip --version`` reports the installed distribution's version (pyproject's), not a literal in the code."""
from __future__ import annotations

from importlib import metadata

import pytest

from hlip_engine.cli import installed_version, main


def test_version_is_the_installed_distributions(capsys):
    expected = metadata.version("hlip-napari")
    assert installed_version() == expected
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"hlip-napari {expected}"


def test_version_without_an_installed_distribution(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert installed_version() == "unknown"
