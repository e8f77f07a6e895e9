"""A folder of labelled images: its layout, its files and their manifest.

The layout is torchvision's ``ImageFolder`` (``<root>/<class>/**/<image>``), or ``train/`` and
``test/`` folders each in that layout. Class names are the class folders' names, sorted.
Files whose extension no image format claims, and hidden files and folders (``.DS_Store``,
``.git``), are ignored; whether the rest really are images is for the decoder to find out.

The manifest lists every image file with its size and content hash; the dataset's version is
the hash of that list, so adding, removing or changing a file gives a new version and
touching one does not. Hashes of files whose size and modification time are unchanged since
the previous manifest are reused, so a large folder is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgclf.common.errors import UserError
from imgclf.common.files import write_json
from imgclf.data.archives import extract, is_archive

SPLIT_FOLDERS = ("train", "test")


class FolderError(UserError):
    """The image folder is missing or not laid out as a dataset."""


@dataclass(frozen=True)
class ImageFile:
    """One image file: where it is (relative to the root), its class and given split."""

    path: str
    label: str
    split: str | None  # "train" or "test" when the folder has train/ and test/
    size: int
    mtime_ns: int
    sha256: str = ""


# formats Pillow recognises but cannot decode by itself
UNDECODED = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})


def image_extensions() -> frozenset[str]:
    """Every file extension of an image format Pillow decodes (``.png``, ``.jpg``, ...)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in UNDECODED)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _walk(folder: Path) -> Iterator[Path]:
    """Files below ``folder``, sorted, skipping hidden files and folders."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(current) / name


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def layout(root: Path) -> dict[str | None, Path]:
    """``{"train": .., "test": ..}`` for a folder with both, else ``{None: root}``.

    Raises:
        FolderError: the folder does not exist, or has no class folders.
    """
    if not root.is_dir():
        raise FolderError(f"data.path {root}: no such folder; point data.path at a folder of "
                          "class folders (or at a .zip/.tar/.tar.gz of one)")
    names = {p.name for p in class_folders(root)}
    if set(SPLIT_FOLDERS) <= names:
        return {split: root / split for split in SPLIT_FOLDERS}
    if "train" in names or "test" in names:
        given = "train" if "train" in names else "test"
        missing = "test" if given == "train" else "train"
        raise FolderError(f"{root}: has {given}/ but no {missing}/; give both, or put the "
                          "class folders directly in it")
    return {None: root}


def scan(root: Path, previous: Mapping[str, ImageFile] | None = None) -> list[ImageFile]:
    """Every image file of the dataset at ``root``, with its content hash.

    ``previous`` (path -> entry, from an earlier manifest) lends its hash to a file whose
    size and modification time are unchanged.

    Raises:
        FolderError: the layout is wrong or fewer than two classes hold image files.
    """
    previous = previous or {}
    extensions = image_extensions()
    found = []
    for split, folder in layout(root).items():
        classes = class_folders(folder)
        for class_dir in classes:
            for path in _walk(class_dir):
                if path.suffix.lower() not in extensions or not path.is_file():
                    continue
                stat = path.stat()
                entry = ImageFile(path.relative_to(root).as_posix(), class_dir.name, split,
                                  stat.st_size, stat.st_mtime_ns)
                found.append(_hashed(root, entry, previous.get(entry.path)))
        _check_classes(folder, {c.name for c in classes}, {f.label for f in found
                                                            if f.split == split})
    return found


def _check_classes(folder: Path, classes: set[str], with_files: set[str]) -> None:
    if len(with_files) < 2:
        raise FolderError(f"{folder}: {len(with_files)} class folder(s) hold image files; a "
                          "classifier needs at least 2 (one folder of images per class)")
    if empty := sorted(classes - with_files):
        raise FolderError(f"{folder}: class folder(s) {', '.join(empty)} hold no image "
                          "files; add images or remove the folder(s)")


def _hashed(root: Path, entry: ImageFile, earlier: ImageFile | None) -> ImageFile:
    if earlier and (earlier.size, earlier.mtime_ns) == (entry.size, entry.mtime_ns):
        return ImageFile(**{**asdict(entry), "sha256": earlier.sha256})
    digest = hashlib.sha256()
    with open(root / entry.path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return ImageFile(**{**asdict(entry), "sha256": digest.hexdigest()})


def data_version(files: list[ImageFile]) -> str:
    """A short id of the dataset's content: paths, classes, splits and file hashes."""
    listing = "\n".join(f"{f.path}\t{f.label}\t{f.split}\t{f.sha256}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:32]


def manifest(root: Path, source: str, files: list[ImageFile], **extra: Any) -> dict[str, Any]:
    """The manifest the first stage writes: every file, the classes and the version."""
    return {"dataset": "folder", "source": source, "root": str(root),
            "data_version": data_version(files),
            "classes": sorted({f.label for f in files}),
            "files": [asdict(f) for f in files], **extra}


def read_manifest_files(path: Path) -> dict[str, ImageFile]:
    """The files of a manifest written earlier, by path (empty when there is none)."""
    try:
        data = json.loads(path.read_text())
        return {f["path"]: ImageFile(**f) for f in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def ingest(source: Path, out_dir: Path, cache: Path) -> dict[str, Any]:
    """The manifest of the folder (or archive) at ``source``; an archive is extracted into
    ``out_dir/images`` first. ``cache`` keeps the hashes for the next run.

    Raises:
        FolderError: ``source`` is missing or not a dataset.
        ArchiveError: the archive is unreadable or refused.
    """
    if not source.exists():
        raise FolderError(f"data.path {source}: not found; point data.path at a folder of "
                          "class folders (or at a .zip/.tar/.tar.gz of one)")
    if source.is_file() and not is_archive(source):
        raise FolderError(f"data.path {source}: a file, but not a .zip, .tar or .tar.gz "
                          "archive; point data.path at a folder of class folders or an archive")
    root = source.resolve()
    if source.is_file():
        root = (out_dir / "images").resolve()
        extract(source, root)
    files = scan(root, read_manifest_files(cache))
    write_json(cache, {"root": str(root), "files": [asdict(f) for f in files]})
    return manifest(root, str(source), files)
