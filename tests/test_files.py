from __future__ import annotations

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
