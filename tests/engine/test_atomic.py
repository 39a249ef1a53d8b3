"""The one atomic write: a reader sees the old file or the new one, never half of one, and nothing is left behind."""
from __future__ import annotations

import pytest

from hlip_engine.atomic import atomic_dir, atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "old")
    with atomic_write(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed half-way")
    assert target.read_text().strip().startswith('{\n  "v": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_refuses_empty_result(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(tmp_path / "x.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir(tmp_path):
    final = tmp_path / "cache" / "series"
    with pytest.raises(ValueError), atomic_dir(final) as tmp:
        (tmp / "1.dcm").write_bytes(b"x")
        raise ValueError("server gone")
    assert not final.exists() and list((tmp_path / "cache").iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "1.dcm").write_bytes(b"x")
    assert (final / "1.dcm").read_bytes() == b"x"
    with pytest.raises(FileExistsError), atomic_dir(final):
        pass
