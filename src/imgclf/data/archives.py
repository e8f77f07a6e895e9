"""Extracting a dataset archive (``.zip``, ``.tar``, ``.tar.gz``) without trusting it.

Every entry is checked before anything is written: absolute names, ``..`` components, links
and special files are refused, and so are archives whose entries add up to more than the
limits (archive bombs). Members go to a temporary folder beside the target, which replaces
the target only once everything is out, so a refused or broken archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from imgclf.common.errors import UserError, one_line
from imgclf.common.settings import ARCHIVE_SUFFIXES

MAX_BYTES = 32 * 2**30  # what all members may add up to, extracted
MAX_MEMBERS = 2_000_000
MAX_RATIO = 1000  # extracted size over compressed size of one zip member
CHUNK = 1 << 20


class ArchiveError(UserError):
    """An archive is unreadable, hostile or too large."""


@dataclass(frozen=True)
class Member:
    """One regular file of an archive: its checked relative name and extracted size."""

    name: PurePosixPath
    size: int


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def safe_name(archive: Path, name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the target folder.

    Raises:
        ArchiveError: the name is absolute or climbs out with ``..``.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise ArchiveError(f"{archive}: refused: entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"{archive}: refused: entry {name!r} points outside the archive "
                           "('..')")
    return path


def _check_totals(archive: Path, members: list[Member]) -> None:
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"{archive}: refused: {len(members)} files, more than the "
                           f"{MAX_MEMBERS} allowed")
    total = sum(member.size for member in members)
    if total > MAX_BYTES:
        raise ArchiveError(f"{archive}: refused: it would extract to {total / 2**30:.1f} GiB, "
                           f"more than the {MAX_BYTES / 2**30:.0f} GiB allowed")


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, Member]]:
    found = []
    for info in zf.infolist():
        name = safe_name(archive, info.filename)
        if info.is_dir():
            continue
        if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # a link or device
            raise ArchiveError(f"{archive}: refused: entry {info.filename!r} is not a "
                               "regular file (a link?)")
        if info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveError(f"{archive}: refused: entry {info.filename!r} expands "
                               f"{info.file_size // max(info.compress_size, 1)}-fold "
                               "(an archive bomb?)")
        found.append((info, Member(name, info.file_size)))
    return found


def _tar_members(archive: Path, tf: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, Member]]:
    found = []
    for info in tf.getmembers():
        name = safe_name(archive, info.name)
        if info.isdir():
            continue
        if not info.isfile():
            raise ArchiveError(f"{archive}: refused: entry {info.name!r} is not a regular "
                               "file (a link or a device)")
        found.append((info, Member(name, info.size)))
    return found


def _copy_limited(source: IO[bytes], dest: Path, limit: int, archive: Path, name: str) -> None:
    """Copy at most ``limit`` bytes: sizes stated in an archive's headers may lie."""
    written = 0
    with open(dest, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise ArchiveError(f"{archive}: refused: entry {name!r} holds more data than "
                                   "its header says (an archive bomb?)")
            out.write(chunk)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` that replaces it on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract(archive: Path, target: Path) -> list[Member]:
    """Extract ``archive`` into ``target`` (replacing it); return its regular files.

    Raises:
        ArchiveError: the archive cannot be read, or holds an entry that is refused.
    """
    try:
        with _staging(target) as staging:
            if archive.name.lower().endswith(".zip"):
                return _extract_zip(archive, staging)
            return _extract_tar(archive, staging)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{archive}: cannot read the archive: {one_line(exc)}") from None


def _write_members(archive: Path, staging: Path, members: list[Member],
                   open_member: Callable[[int], IO[bytes]]) -> list[Member]:
    """Check the totals, then copy member ``i`` (opened by ``open_member(i)``) into place."""
    _check_totals(archive, members)
    for i, member in enumerate(members):
        dest = staging.joinpath(*member.name.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open_member(i) as source:
            _copy_limited(source, dest, member.size, archive, str(member.name))
    return members


def _extract_zip(archive: Path, staging: Path) -> list[Member]:
    with zipfile.ZipFile(archive) as zf:
        entries = _zip_members(archive, zf)
        return _write_members(archive, staging, [member for _, member in entries],
                              lambda i: zf.open(entries[i][0]))


def _extract_tar(archive: Path, staging: Path) -> list[Member]:
    with tarfile.open(archive) as tf:
        entries = _tar_members(archive, tf)

        def open_member(i: int) -> IO[bytes]:
            source = tf.extractfile(entries[i][0])
            if source is None:
                raise ArchiveError(f"{archive}: entry {entries[i][0].name!r} cannot be read")
            return source

        return _write_members(archive, staging, [member for _, member in entries], open_member)
