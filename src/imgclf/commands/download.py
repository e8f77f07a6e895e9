"""The download stage's work: verify the dataset's published files, or list and hash a
folder of images. Its command line, and what it does, is in ``imgclf/download.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from imgclf.common.files import project_root, write_json
from imgclf.common.settings import Settings, load_settings
from imgclf.data import folders
from imgclf.data.datasets import DATASETS, DataError, DataFile, DatasetSpec, data_version, verify
from imgclf.tracking.runs import stage_run

log = logging.getLogger(__name__)
HASH_CACHE = "data/.cache"  # the content hashes of a folder dataset's files, by folder


@dataclass(frozen=True)
class FetchedFile:
    """A verified file in the output folder and where it came from."""

    name: str
    source: str
    check: str
    size: int
    md5: str


def mirror_dirs(templates: tuple[str, ...], dataset: str) -> list[Path]:
    """Expand ``{dataset}`` in the configured mirror folders."""
    return [Path(template.replace("{dataset}", dataset)).expanduser() for template in templates]


def _copy_verified(source: str, expected: DataFile, dest: Path, timeout_s: float) -> str:
    """Copy ``source`` (a folder path or a URL) to ``dest`` if its checksum matches."""
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        if "://" in source:
            with urllib.request.urlopen(source, timeout=timeout_s) as response, \
                    open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        else:
            shutil.copyfile(source, tmp)
        check = verify(tmp, expected)
        os.replace(tmp, dest)
        return check
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _why(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return str(exc) or type(exc).__name__


def download(
    spec: DatasetSpec, mirrors: list[Path], online: bool, timeout_s: float, out_dir: Path
) -> list[FetchedFile]:
    """Put every file of ``spec`` into ``out_dir``, verified, trying mirrors then URLs.

    Raises:
        DataError: some file matched its checksum at no source; the message lists every place
            tried and how to make the data available.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fetched, failures = [], []
    for expected in spec.files:
        dest = out_dir / expected.name
        if dest.exists():
            try:  # a verified copy from an earlier run is kept; anything else is replaced
                check = verify(dest, expected)
                fetched.append(FetchedFile(expected.name, str(dest), check,
                                           dest.stat().st_size, expected.md5))
                continue
            except (OSError, DataError) as exc:
                log.warning("%s is corrupt (%s): replacing it", dest, _why(exc))
                dest.unlink()
        places = [str(folder / expected.name) for folder in mirrors]
        if online:
            places += [url + expected.name for url in spec.urls]
        tried = []
        for place in places:
            try:
                check = _copy_verified(place, expected, dest, timeout_s)
            except (OSError, DataError) as exc:
                tried.append(f"{place}: {_why(exc)}")
                continue
            fetched.append(FetchedFile(expected.name, place, check, dest.stat().st_size,
                                       expected.md5))
            break
        else:
            failures.append((expected.name, tried or ["(no mirrors configured, online: false)"]))
    if failures:
        raise DataError(_no_source_message(spec, failures, online))
    return fetched


def _no_source_message(spec: DatasetSpec, failures: list[tuple[str, list[str]]],
                       online: bool) -> str:
    lines = [f"could not get {spec.name}: no source had a verified copy of"]
    for name, tried in failures:
        lines.append(f"  {name}, tried:")
        lines += [f"    {attempt}" for attempt in tried]
    lines.append("How to fix:")
    if spec.debian_package:
        lines.append(f"  - install Debian's package: sudo apt-get install {spec.debian_package}")
    names = ", ".join(file.name for file in spec.files)
    lines.append(f"  - or put the files ({names}) in a folder listed in download.mirrors "
                 "(params.yaml)")
    if not online:
        lines.append("  - or set download.online: true on a machine with network access")
    else:
        lines.append("  - or retry on a machine that can reach the URLs above")
    return "\n".join(lines)


def ingest_folder(args: argparse.Namespace, settings: Settings) -> int:
    """A folder dataset: list and hash its images (extracting an archive first)."""
    source = Path(settings.data.path).expanduser()
    key = hashlib.sha1(str(source.resolve()).encode(), usedforsecurity=False).hexdigest()
    cache = project_root() / HASH_CACHE / f"{key[:16]}.json"
    found = folders.ingest(source, args.out, cache)
    with stage_run("download", settings, data_version=found["data_version"]) as run:
        found["lineage"] = run.lineage
        write_json(args.out / "manifest.json", found)
        files, classes = found["files"], found["classes"]
        total = sum(f["size"] for f in files)
        write_json(args.metrics, {"files": len(files), "bytes": total, "classes": len(classes),
                                  "mlflow_run_id": run.run_id})
        # facts of the data, not scores: params, so charts stay on what is compared
        run.log_params({"source": str(source.resolve()), "files": len(files),
                        "bytes": total, "classes": len(classes)})
        run.log_dict(found, "manifest.json")
        print(f"{source}: {len(files)} image files in {len(classes)} classes "
              f"(data version {found['data_version']})")
    return 0


def execute(args: argparse.Namespace) -> int:
    settings = load_settings(args.params)
    if settings.data.dataset == "folder":
        return ingest_folder(args, settings)
    spec = DATASETS[settings.data.dataset]
    mirrors = mirror_dirs(settings.download.mirrors, spec.name)
    version = data_version(spec)
    with stage_run("download", settings, data_version=version) as run:
        files = download(spec, mirrors, settings.download.online, settings.download.timeout_s,
                         args.out)
        manifest = {"dataset": spec.name, "data_version": version, "lineage": run.lineage,
                    "files": [asdict(file) for file in files]}
        write_json(args.out / "manifest.json", manifest)
        write_json(args.metrics, {"files": len(files),
                                  "bytes": sum(file.size for file in files),
                                  "mlflow_run_id": run.run_id})
        # facts of the data, not scores: params, so charts stay on what is compared
        run.log_params({**{f"source/{file.name}": file.source for file in files},
                        **{f"md5/{file.name}": file.md5 for file in files},
                        **{f"size_bytes/{file.name}": file.size for file in files}})
        run.log_dict(manifest, "manifest.json")
        for file in files:
            print(f"{file.name}: {file.size} bytes from {file.source} ({file.check} verified)")
    return 0
