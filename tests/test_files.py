from __future__ import annotations

import os
import stat

import pytest

from imgclf.common.files import atomic_open, project_root, write_json


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write('{"a": ')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_new_file_appears_only_complete(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_open(target, "w") as handle:
        handle.write("partial")
        assert not target.exists()
    assert target.read_text() == "partial"


def test_project_root_prefers_dvc_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert project_root() == tmp_path.resolve()


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_open(tmp_path / "model.pt", "wb") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    for name in ("metrics.json", "model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
