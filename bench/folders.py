"""Benchmarks of folder datasets: decoding a folder of JPEGs, training from the memory-mapped
store, and memory with a store larger than 4 GB.

Every comparison runs both sides in this one process, interleaved, against torchvision's
``ImageFolder`` + ``DataLoader`` (``num_workers`` = cores) doing the same decode and resize,
and, for training input, also against a plain ``TensorDataset`` + ``DataLoader`` over the
same uint8 tensors: the strongest plain-PyTorch alternative.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from bench.run import BIN, interleave, make_project, train_images
from imgclf.common.settings import parse_settings, read_yaml
from imgclf.data.audit import decode_all
from imgclf.data.batches import batches
from imgclf.data.folders import scan
from imgclf.data.splits import Meta, Split, load_split, save_meta, save_splits
from imgclf.data.store import CHUNK, write_array
from imgclf.training.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
CLASSES = 10


def _write_jpegs(job: tuple[Path, int, int]) -> None:
    from PIL import Image

    folder, start, count = job
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        label = i % CLASSES
        width, height = (int(v) for v in rng.integers(96, 400, 2))
        base = np.array([(label * 25) % 256, (label * 70) % 256, (label * 130) % 256])
        pixels = np.clip(base + rng.integers(-50, 50, (height, width, 3)), 0, 255)
        path = folder / f"class{label}" / f"{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


def _generate(folder: Path, n: int, suffix: str, write, step: int) -> Path:
    """``n`` files made by ``write((folder, start, count))`` in ten class folders, in
    parallel; an existing folder of ``n`` such files is kept."""
    if folder.is_dir() and sum(1 for _ in folder.rglob(f"*{suffix}")) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir(parents=True)
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(write, [(folder, start, min(step, n - start)) for start in range(0, n, step)])
    return folder


def make_folder(folder: Path, n: int) -> Path:
    """``n`` RGB JPEGs of sizes from 96 to 400 pixels a side, in ten class folders."""
    return _generate(folder, n, ".jpg", _write_jpegs, 1000)


def _torchvision_folder(folder: Path, flip: bool = False):
    from torchvision import datasets, transforms

    steps = [transforms.Resize(SIZE), transforms.PILToTensor()]
    if flip:
        steps.insert(1, transforms.RandomHorizontalFlip())
    return datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))


def bench_decode(folder: Path, repeats: int) -> dict:
    """Images per second decoded and resized to 64x64: ours (all cores) vs torchvision."""
    workers = os.cpu_count() or 1
    files = scan(folder)

    def ours() -> float:
        started = time.perf_counter()
        decode_all(folder, files, SIZE, "squash", 3, workers)
        return time.perf_counter() - started

    def theirs() -> float:
        loader = torch.utils.data.DataLoader(_torchvision_folder(folder), batch_size=256,
                                             num_workers=workers)
        started = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - started

    times_ours, times_theirs = [], []
    for _ in range(repeats):
        times_ours.append(ours())
        times_theirs.append(theirs())
    n = len(files)
    return {"images": n, "ours_images_per_s": n / statistics.median(times_ours),
            "torchvision_images_per_s": n / statistics.median(times_theirs),
            "speedup": statistics.median(times_theirs) / statistics.median(times_ours)}


def bench_train_input(folder: Path, store: Path, n_images: int, repeats: int) -> dict:
    """Training images per second at 64x64 RGB (cnn, batch 128, flip augmentation) fed from
    the memory-mapped store, from torchvision's folder loader, and from a TensorDataset."""
    workers = os.cpu_count() or 1
    split = load_split(store, "train")
    model = build_model("cnn", (3, *SIZE), CLASSES, 16, [0.5] * 3, [0.25] * 3)
    in_memory = torch.utils.data.TensorDataset(split.images.clone(), split.labels.clone())
    sides = {
        "store": lambda: train_images(model, batches(split, 128, generator=torch.Generator()
                                               .manual_seed(0), augment="flip"), n_images),
        "torchvision_folder": lambda: train_images(model, torch.utils.data.DataLoader(
            _torchvision_folder(folder, flip=True), batch_size=128, shuffle=True,
            num_workers=workers), n_images),
        "tensor_dataset": lambda: train_images(model, torch.utils.data.DataLoader(
            in_memory, batch_size=128, shuffle=True), n_images),
    }
    for side in sides.values():  # untimed warm-up of each
        side()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            times[name].append(side())
    per_s = {name: n_images / statistics.median(t) for name, t in times.items()}
    return {"images_per_s": per_s,
            "vs_torchvision_folder": per_s["store"] / per_s["torchvision_folder"],
            "vs_tensor_dataset": per_s["store"] / per_s["tensor_dataset"]}


def decoded_store(folder: Path, store: Path) -> Path:
    """The folder decoded at 64x64 into a preprocessed-split store (train only)."""
    files = scan(folder)
    decoded = decode_all(folder, files, SIZE, "squash", 3)
    labels = torch.tensor([int(f.label.removeprefix("class")) for f in decoded.files])
    split = Split(torch.from_numpy(decoded.images[decoded.rows]), labels)
    meta = Meta("folder", [f"class{i}" for i in range(CLASSES)], [3, *SIZE], [0.5] * 3,
                [0.25] * 3, {})
    save_splits(store, {"train": split, "val": split.take(torch.arange(512))}, meta)
    return store


def big_store(store: Path, gib: float) -> Path:
    """A store of random 64x64 RGB images larger than ``gib`` GiB, written in chunks."""
    per_image = 3 * SIZE[0] * SIZE[1]
    n = int(gib * 2**30 / per_image) + CHUNK
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, (CHUNK, 3, *SIZE), dtype=np.uint8)

    def chunks():
        for start in range(0, n, CHUNK):
            yield chunk[: min(CHUNK, n - start)]

    store.mkdir(parents=True, exist_ok=True)
    write_array(store / "train-images.npy", (n, 3, *SIZE), chunks())
    np.save(store / "train-labels.npy", np.arange(n, dtype=np.int64) % CLASSES)
    np.save(store / "val-images.npy", chunk[:512])
    np.save(store / "val-labels.npy", np.arange(512, dtype=np.int64) % CLASSES)
    save_meta(store, Meta("folder", [f"class{i}" for i in range(CLASSES)], [3, *SIZE],
                          [0.5] * 3, [0.25] * 3, {}))
    return store


def bench_memory(workdir: Path, gib: float = 4.5) -> dict:
    """Peak RSS of the real train stage, one epoch over a store larger than 4 GB."""
    store = big_store(workdir.resolve() / "big-store", gib)
    project = workdir.resolve() / "rss-project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    raw = read_yaml(ROOT / "params.yaml")
    raw["data"]["dataset"] = "folder"
    raw["train"].update(epochs=1, width=8, tta="none", device="cpu", augment="none")
    raw["tracking"]["experiment"] = "bench-memory"
    parse_settings(raw)
    (project / "params.yaml").write_text(json.dumps(raw))
    env = {**os.environ, "DVC_ROOT": str(project), "PYTHONPATH": str(ROOT / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "imgclf.train", "--params", "params.yaml", "--data", str(store),
         "--model", "model.pt", "--metrics", "m.json", "--plots", "h.csv"], cwd=project, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = _peak_rss(child)
    _, err = child.communicate()
    if child.returncode:
        raise RuntimeError(f"train failed: {err[-2000:]}")
    size = (store / "train-images.npy").stat().st_size
    return {"store_bytes": size, "store_gib": size / 2**30, "peak_rss_bytes": peak,
            "peak_rss_gib": peak / 2**30, "seconds": time.perf_counter() - started,
            "images": int(np.load(store / "train-labels.npy", mmap_mode="r").shape[0])}


def _peak_rss(child: subprocess.Popen) -> int:
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.2)
    return peak


def _write_pngs(job: tuple[Path, int, int]) -> None:
    from PIL import Image

    folder, start, count = job
    for i in range(start, start + count):
        pixels = np.zeros(64, dtype=np.uint8)
        pixels[:4] = np.frombuffer(i.to_bytes(4, "big"), dtype=np.uint8)  # distinct files
        Image.fromarray(pixels.reshape(8, 8)).save(folder / f"class{i % CLASSES}" / f"{i}.png")


def many_files(folder: Path, n: int) -> Path:
    """``n`` distinct 8x8 PNGs in ten class folders."""
    return _generate(folder, n, ".png", _write_pngs, 5000)


def bench_unchanged_folder(workdir: Path, n_files: int = 100_000) -> dict:
    """Seconds a ``dvc repro`` of the first stage takes on an unchanged folder of
    ``n_files`` files (everything after it is skipped when it changes nothing), against the
    first ingest and against ``dvc version``."""
    folder = many_files(workdir.resolve() / "many", n_files)
    project = workdir.resolve() / "noop-project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    raw = read_yaml(ROOT / "params.yaml")
    raw["data"].update(dataset="folder", path=str(folder))
    parse_settings(raw)
    env = make_project(project, raw)

    def dvc(*args: str) -> float:
        began = time.perf_counter()
        done = subprocess.run([BIN / "dvc", *args], cwd=project, env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"dvc {' '.join(args)} failed: {done.stdout[-2000:]}")
        return time.perf_counter() - began

    first = dvc("repro", "download")
    noop = interleave(lambda: dvc("version"), lambda: dvc("repro", "download"), 3)
    return {"files": n_files, "first_s": first, "noop": noop,
            "noop_s": statistics.median(noop["b_s"])}


def bench_folders(workdir: Path, repeats: int, n_images: int = 20000) -> dict:
    """All of them on a generated folder of ``n_images`` mixed-size RGB JPEGs (and one of
    100,000 small PNGs for the unchanged-folder check)."""
    started = time.perf_counter()
    folder = make_folder(workdir / "jpegs", n_images)
    generated_s = time.perf_counter() - started
    store = decoded_store(folder, workdir / "jpeg-store")
    return {"decode": bench_decode(folder, repeats),
            "train_input": bench_train_input(folder, store, 5120, repeats),
            "memory": bench_memory(workdir), "unchanged": bench_unchanged_folder(workdir),
            "generate_s": generated_s}
