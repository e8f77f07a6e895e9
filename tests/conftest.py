"""Shared fixtures: a tiny project (params, datasets in the real file formats, MLflow store),
and helpers that drive a copy of the real project with DVC."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from ruamel.yaml import YAML

from imgclf.data import datasets
from imgclf.data.datasets import DataFile, DatasetSpec
from imgclf.tracking.store import tracking_uri

REPO = Path(__file__).resolve().parents[1]
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = REPO / "src" / "imgclf"

# Small, fast settings layered over the repository's own params.yaml.
TINY = {
    "data.val_fraction": 0.2,
    "download.mirrors": [],
    "download.online": False,
    "train.width": 4,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.lr": 0.01,
    "train.threads": 1,
    "train.augment": "none",  # the tiny images' classes are not mirror-symmetric
    "train.tta": "none",
    "train.device": "cpu",
    "tracking.experiment": "tests",
}


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".", 1)
    raw.setdefault(section, {})[name] = value


def repo_params(**overrides: Any) -> dict[str, Any]:
    """The repository's params.yaml as a dict, with ``section.key`` overrides applied."""
    raw = YAML(typ="safe", pure=True).load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return raw


def write_yaml(path: Path, data: Any) -> Path:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with path.open("w") as handle:
        yaml.dump(data, handle)
    return path


# --- tiny datasets in the real formats -------------------------------------------------------

def learnable_images(n: int, classes: int, shape: tuple[int, int, int], seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class is a bright square at a class-specific place."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=generator)]
    c, h, w = shape
    images = torch.randint(0, 60, (n, c, h, w), generator=generator, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 4)
        images[i, :, 2 + row * 8: 8 + row * 8, 2 + col * 6: 7 + col * 6] = 250
    return images, labels


def idx_bytes(tensor: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in tensor.shape)
    return header + tensor.to(torch.uint8).contiguous().numpy().tobytes()


def write_idx_dataset(folder: Path, n_train: int = 300, n_test: int = 100, seed: int = 0
                      ) -> dict[str, bytes]:
    """Write the four ``*-idx?-ubyte.gz`` files; return their bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = learnable_images(n, 10, (1, 28, 28), seed + offset)
        for kind, tensor in (("images-idx3", images[:, 0]), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.compress(idx_bytes(tensor), mtime=0)
            (folder / name).write_bytes(data)
            written[name] = data
    return written


def cifar_records(images: torch.Tensor, labels: torch.Tensor) -> bytes:
    rows = torch.cat([labels.to(torch.uint8)[:, None], images.reshape(len(images), -1)], dim=1)
    return rows.numpy().tobytes()


def write_cifar_archive(path: Path, per_batch: int = 20, n_test: int = 40, seed: int = 0
                        ) -> bytes:
    """Write a ``cifar-10-binary.tar.gz`` with the real member names and record layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = [(f"data_batch_{i}.bin", per_batch, seed + i) for i in range(1, 6)]
        members.append(("test_batch.bin", n_test, seed))
        for name, n, member_seed in members:
            data = cifar_records(*learnable_images(n, 10, (3, 32, 32), member_seed))
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def spec_for(real: DatasetSpec, files: dict[str, bytes], urls: tuple[str, ...] = ()
             ) -> DatasetSpec:
    """``real`` with the checksums of the given tiny files (the test stands in for upstream)."""
    return DatasetSpec(
        name=real.name, urls=urls, classes=real.classes, image_shape=real.image_shape,
        debian_package=real.debian_package,
        files=tuple(DataFile(name, hashlib.md5(data).hexdigest()) for name, data in files.items()),
    )


@pytest.fixture
def tiny_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mirror folder with tiny Fashion-MNIST-format files the registry accepts."""
    mirror = tmp_path / "mirror"
    files = write_idx_dataset(mirror)
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist",
                        spec_for(datasets.DATASETS["fashion-mnist"], files))
    return mirror


# --- a project folder with its own MLflow store ----------------------------------------------

@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised MLflow SQLite database, created once (migrations take seconds)."""
    folder = tmp_path_factory.mktemp("store")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    MlflowClient().search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> Path:
    """A project root (``DVC_ROOT``) with tiny params and a fresh default MLflow store."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "mlruns").mkdir()
    shutil.copy(empty_store, root / "mlruns" / "mlflow.db")
    write_yaml(root / "params.yaml", repo_params(**TINY))
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    yield root
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def set_params(project: Path) -> Callable[..., Path]:
    """Rewrite the project's params.yaml with ``section__key=value`` overrides."""
    def apply(**overrides: Any) -> Path:
        raw = repo_params(**TINY)
        for key, value in overrides.items():
            set_dotted(raw, key.replace("__", "."), value)
        return write_yaml(project / "params.yaml", raw)
    return apply


@pytest.fixture
def client(project: Path) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri(project))
    return MlflowClient()


def runs_of(client: MlflowClient, stage: str | None = None, experiment: str = "tests"):
    """Runs of the test experiment, newest first, optionally of one stage."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.stage = '{stage}'" if stage else ""
    return client.search_runs([found.experiment_id], query, order_by=["start_time DESC"])


@pytest.fixture
def processed(project: Path, set_params: Callable[..., Path], tiny_mirror: Path) -> Path:
    """``data/processed`` made by the real download and preprocess stages from tiny files."""
    from imgclf import download, preprocess
    from imgclf.common.cli import run_stage

    set_params(download__mirrors=[str(tiny_mirror)])
    assert run_stage(download.main, DOWNLOAD_ARGS) == 0
    assert run_stage(preprocess.main, PREPROCESS_ARGS) == 0
    return project / "data" / "processed"


DOWNLOAD_ARGS = ["--out", "data/raw", "--metrics", "reports/download_metrics.json"]
PREPROCESS_ARGS = ["--raw", "data/raw", "--out", "data/processed",
                   "--metrics", "reports/preprocess_metrics.json", "--audit", "reports/audit.json"]
TRAIN_ARGS = ["--data", "data/processed", "--model", "models/model.pt",
              "--metrics", "reports/train_metrics.json", "--plots", "reports/train_history.csv"]
EVALUATE_ARGS = ["--data", "data/processed", "--model", "models/model.pt",
                 "--metrics", "reports/metrics.json", "--per-class", "reports/per_class.json",
                 "--confusion", "reports/confusion.csv", "--confusion-png", "reports/confusion.png",
                 "--calibration-png", "reports/calibration.png",
                 "--predictions", "reports/predictions.csv"]


DVC = str(Path(sys.executable).parent / "dvc")


def dvc_env() -> dict[str, str]:
    """A user's environment: this venv first on PATH, no test-only variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT") and not k.startswith("PYTEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``dvc`` in ``repo`` as a user would; fail the test if it fails or hangs.

    Output goes through files, not pipes: processes dvc leaves running (``queue start``'s
    workers) inherit them, and reading a pipe would last as long as those do.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([DVC, *args], cwd=repo, env=dvc_env(), stdout=out, stderr=err,
                              text=True, stdin=subprocess.DEVNULL, timeout=900)
        out.seek(0), err.seek(0)
        done.stdout, done.stderr = out.read(), err.read()
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


def make_repo(root: Path, **overrides) -> Path:
    """A fresh clone-like project: the real dvc.yaml and code, params shrunk for speed."""
    shutil.copytree(PACKAGE, root / "src" / "imgclf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "data" / "images", root / "data" / "images")  # data.path's default
    write_yaml(root / "params.yaml", repo_params(**{
        "data.train_limit": 2000, "data.test_limit": 500, "train.epochs": 2,
        "train.width": 8, "train.threads": 2, "tune.n_trials": 2, "tune.epochs": 1,
        "tune.train_fraction": 0.5,
        # the lighter cnn learns 2,000 images in two epochs; the best trial always wins, so
        # each experiment's learning rate reaches train (these tests follow the plumbing)
        "train.model": "cnn", "tune.baseline_alpha": 1, **overrides}))
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


# --- folders of image files ------------------------------------------------------------------

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}


def photo(colour: tuple[int, int, int], size: tuple[int, int], seed: int):
    """A noisy RGB picture of one dominant colour, ``size`` = (width, height)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    pixels = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_image_folder(root: Path, per_class: int = 12, split: str | None = None,
                       sizes: tuple[tuple[int, int], ...] = ((40, 30), (32, 32), (50, 40)),
                       seed: int = 0) -> dict[str, list[Path]]:
    """Class folders of JPEGs and PNGs of mixed sizes, one dominant colour per class."""
    written: dict[str, list[Path]] = {}
    for c, (name, colour) in enumerate(COLOURS.items()):
        folder = root / (split or "") / name
        (folder / "more").mkdir(parents=True, exist_ok=True)  # a nested subfolder
        for i in range(per_class):
            image = photo(colour, sizes[i % len(sizes)], seed * 1000 + c * 100 + i)
            path = folder / ("more" if i % 4 == 0 else "") / (
                f"{name}{i}.jpg" if i % 2 else f"{name}{i}.png")
            image.save(path, quality=95)
            written.setdefault(name, []).append(path)
    return written
