"""Dataset archives: extracted whole and inside their folder, or refused before anything is
written."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from imgclf.data.archives import ArchiveError, extract


def tar_with(path, members):
    with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_a_tar_extracts_its_files(tmp_path, suffix):
    archive = tar_with(tmp_path / f"photos{suffix}", [file_info("cats/a.png", b"a"),
                                                       file_info("dogs/b.png", b"bb")])
    members = extract(archive, tmp_path / "out")
    assert sorted(str(m.name) for m in members) == ["cats/a.png", "dogs/b.png"]
    assert (tmp_path / "out/dogs/b.png").read_bytes() == b"bb"


def test_a_zip_extracts_its_files_and_replaces_the_target(tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/a.png", b"a")
        zf.writestr("dogs/", b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/stale.png").write_bytes(b"old")
    extract(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["a.png"]


@pytest.mark.parametrize(("member", "reason"), [
    (file_info("../escaped.png", b"x"), "points outside"),
    (file_info("cats/../../escaped.png", b"x"), "points outside"),
    (file_info("/tmp/escaped-absolute.png", b"x"), "absolute path"),
])
def test_hostile_tar_names_are_refused_and_nothing_is_written(tmp_path, member, reason):
    archive = tar_with(tmp_path / "evil.tar", [file_info("cats/ok.png", b"ok"), member])
    with pytest.raises(ArchiveError, match=reason):
        extract(archive, tmp_path / "data" / "out")
    assert not (tmp_path / "escaped.png").exists()
    assert not (tmp_path / "data" / "out").exists()
    assert list((tmp_path / "data").iterdir()) == []  # no staging folder left either


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(tmp_path, kind):
    link = tarfile.TarInfo("cats/passwd.png")
    link.type, link.linkname = kind, "/etc/passwd"
    archive = tar_with(tmp_path / "links.tar", [(link, None)])
    with pytest.raises(ArchiveError, match="not a regular file"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("cats/passwd.png")
        info.external_attr = 0o120777 << 16  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="not a regular file"):
        extract(archive, tmp_path / "out")


def test_a_zip_bomb_is_refused_before_it_expands(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/huge.png", b"\0" * (20 * 2**20))  # 20 MiB of zeros: ~1000-fold
    with pytest.raises(ArchiveError, match="archive bomb"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archives_over_the_size_limit_are_refused(tmp_path, monkeypatch):
    from imgclf.data import archives

    monkeypatch.setattr(archives, "MAX_BYTES", 10)
    archive = tar_with(tmp_path / "big.tar", [file_info("a/1.png", b"123456"),
                                              file_info("b/2.png", b"123456")])
    with pytest.raises(ArchiveError, match="more than the"):
        extract(archive, tmp_path / "out")


def test_a_broken_archive_says_so(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not a tar file at all")
    with pytest.raises(ArchiveError, match="cannot read the archive"):
        extract(archive, tmp_path / "out")
