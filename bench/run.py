"""The benchmark suite: ``make bench`` writes BENCHMARKS.md and bench/results.json.

Every comparison runs both sides in this one process, interleaved (A B A B ...), and reports
the median ratio with its min-max, so a noisy machine still gives a stable answer. Nothing
here is asserted: these are measurements, not tests.

    python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

from imgclf.commands import tune
from imgclf.common.files import write_json, write_text
from imgclf.common.settings import Settings, load_settings
from imgclf.data.batches import batches, random_flip
from imgclf.data.splits import Split, load_meta, load_split
from imgclf.training.engine import (
    EpochStats,
    fit,
    score,
    set_determinism,
    training_precision,
)
from imgclf.training.trainer import architecture, train
from imgclf.tuning import studies

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def interleave_sides(sides: dict[str, Callable[[], float]], repeats: int) -> dict:
    """Run the sides in turn (A B C A B C ...); each returns a time. For every side after the
    first: the ratios time(side) / time(first side), one per round.

    One untimed round comes first: the first run in a process also pays one-time costs
    (kernel set-up, caches) that belong to no side.
    """
    for side in sides.values():
        side()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            times[name].append(side())
    first, *others = sides
    ratios = {name: [b / a for a, b in zip(times[first], times[name], strict=True)]
              for name in others}
    return {"seconds": times,
            "ratios": {name: {"ratio_median": statistics.median(values),
                              "ratio_min": min(values), "ratio_max": max(values)}
                       for name, values in ratios.items()}}


def interleave(a: Callable[[], float], b: Callable[[], float], repeats: int) -> dict:
    """Two sides, ``a`` then ``b`` (:func:`interleave_sides`); ratio = time(b) / time(a)."""
    result = interleave_sides({"a": a, "b": b}, repeats)
    return {"a_s": result["seconds"]["a"], "b_s": result["seconds"]["b"],
            **result["ratios"]["b"]}


class Stopwatch:
    """Adds up the seconds spent inside its ``with`` blocks."""

    def __init__(self) -> None:
        self.seconds, self._begun = 0.0, 0.0

    def __enter__(self) -> None:
        self._begun = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._begun


def train_images(model: torch.nn.Module, loader, n_images: int) -> float:
    """Seconds to push ``n_images`` through forward, backward and an optimizer step (uint8
    batches are scaled to [0, 1] first, as the project's loader does)."""
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()
    seen, started = 0, time.perf_counter()
    for x, y in loader:
        x = x.float().div_(255) if x.dtype == torch.uint8 else x
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if seen >= n_images:
            break
    return time.perf_counter() - started


def flip_halves(loader, seed: int = 0):
    """Batches of ``loader`` with a random half of each mirrored, as ``augment: flip`` does."""
    generator = torch.Generator().manual_seed(seed)
    for x, y in loader:
        yield random_flip(x.float().div_(255), generator), y


def bench_data_path(data_dir: Path, raw_dir: Path, n_images: int, repeats: int) -> dict:
    """Three loaders feeding the same model the same flip-augmented batches of 128: the
    project's batch loader; a ``TensorDataset`` + ``DataLoader`` over the same uint8 tensors,
    flipping each batch (the strongest plain-PyTorch way); and torchvision's ``FashionMNIST``
    + ``DataLoader`` with per-sample ``ToTensor``, ``RandomHorizontalFlip`` and ``Normalize``
    (the tutorial way)."""
    from torchvision import datasets, transforms

    meta = load_meta(data_dir)
    split = load_split(data_dir, "train")
    images = split.gather(torch.arange(len(split)))  # in memory, as the tensor loader needs
    tensors = torch.utils.data.TensorDataset(images, split.labels)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "FashionMNIST" / "raw"
        folder.mkdir(parents=True)
        for gz in raw_dir.glob("*-ubyte.gz"):
            subprocess.run(f"gunzip -c {gz} > {folder / gz.stem}", shell=True, check=True)
        dataset = datasets.FashionMNIST(tmp, train=True, download=False,
                                        transform=transforms.Compose([
                                            transforms.ToTensor(),
                                            transforms.RandomHorizontalFlip(),
                                            transforms.Normalize(meta.mean, meta.std)]))
        results = {}
        for name in ("mlp", "cnn"):
            recipe = load_settings(ROOT / "params.yaml").train.model_copy(update={"model": name})
            # channels-last, as the train stage runs it; every side feeds this same model
            model = architecture(recipe, meta).build().to(memory_format=torch.channels_last)
            sides = {
                "ours": lambda m=model: train_images(m, batches(
                    split, 128, generator=torch.Generator().manual_seed(0), augment="flip"),
                    n_images),
                "tensors": lambda m=model: train_images(m, flip_halves(
                    torch.utils.data.DataLoader(tensors, batch_size=128, shuffle=True)),
                    n_images),
                "torchvision": lambda m=model: train_images(m, torch.utils.data.DataLoader(
                    dataset, batch_size=128, shuffle=True), n_images),
            }
            result = interleave_sides(sides, repeats)
            result["images_per_s"] = {side: n_images / statistics.median(seconds)
                                      for side, seconds in result["seconds"].items()}
            results[name] = result
    return results


def bench_tracking(data_dir: Path, epochs: int, repeats: int) -> dict:
    """The training loop with per-epoch MLflow logging vs the same loop without tracking."""
    from imgclf.tracking import runs, store

    settings = load_settings(ROOT / "params.yaml")
    recipe = settings.train.model_copy(update={"epochs": epochs})
    meta = load_meta(data_dir)
    train_split = load_split(data_dir, "train").take(torch.arange(10000))
    val_split = load_split(data_dir, "val")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DVC_ROOT"] = tmp
        experiment = store.connect("bench-tracking", Path(tmp))

        in_mlflow: list[float] = []  # per logged run: seconds spent inside MLflow calls

        def run(logged: bool) -> float:
            set_determinism(recipe.seed, recipe.threads, torch.device("cpu"))
            model = architecture(recipe, meta).build()
            started = time.perf_counter()
            if not logged:
                fit(model, train_split, val_split, recipe, device=torch.device("cpu"))
                return time.perf_counter() - started
            import mlflow

            watch = Stopwatch()
            with watch:
                active = mlflow.start_run(experiment_id=experiment)
                handle = runs.StageRun(active.info.run_id, experiment)
                handle.log_params(runs.flatten(settings, ("data", "train")))

            def log_epoch(stats: EpochStats) -> None:
                with watch:
                    handle.log_metrics(stats.metrics(), step=stats.epoch)

            try:
                fit(model, train_split, val_split, recipe, device=torch.device("cpu"),
                    on_epoch=log_epoch)
            finally:
                with watch:
                    mlflow.end_run()
            in_mlflow.append(watch.seconds)
            return time.perf_counter() - started

        result = interleave(lambda: run(False), lambda: run(True), repeats)
        result["in_mlflow_s"] = in_mlflow[-repeats:]  # the timed runs, after the warm-up
        result["in_mlflow_share"] = statistics.median(
            spent / total
            for spent, total in zip(result["in_mlflow_s"], result["b_s"], strict=True))
        del os.environ["DVC_ROOT"]
    return result


class PeakRSS:
    """Samples the summed RSS of a process tree; ``peaks`` holds the max per command line."""

    def __init__(self, root: psutil.Process) -> None:
        self.root, self.peaks, self._stop = root, {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                for proc in self.root.children(recursive=True):
                    cmd = " ".join(proc.cmdline())
                    for stage in ("imgclf.train", "imgclf.evaluate", "imgclf.tune"):
                        if stage in cmd:
                            rss = proc.memory_info().rss
                            self.peaks[stage] = max(self.peaks.get(stage, 0), rss)
            except psutil.Error:
                continue

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def user_env() -> dict[str, str]:
    """The environment a user's ``dvc`` gets: this venv first on PATH, the project's own store."""
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def make_project(workdir: Path, params: dict | None = None) -> dict[str, str]:
    """A fresh git + DVC project of this checkout's pipeline in ``workdir`` (with ``params``
    instead of params.yaml when given); returns the environment to run ``dvc`` in."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, workdir / name)
    if params is not None:
        (workdir / "params.yaml").write_text(json.dumps(params))
    shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "images", workdir / "data" / "images")  # data.path's default
    env = user_env()
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=workdir, check=True)
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=workdir, check=True, env=env)
    subprocess.run([*git, "add", "-A"], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=workdir, check=True)
    return env


def bench_pipeline(workdir: Path) -> dict:
    """The default ``dvc repro`` from nothing: wall time, test accuracy, stage memory."""
    env = make_project(workdir)

    started, began = time.perf_counter(), time.time()
    process = subprocess.Popen([BIN / "dvc", "repro"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakRSS(psutil.Process(process.pid)) as memory:
        log = process.communicate()[0]
    wall = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"dvc repro failed:\n{log}")
    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    train_metrics = json.loads((workdir / "reports/train_metrics.json").read_text())
    tune_metrics = json.loads((workdir / "reports/tune_metrics.json").read_text())
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlruns/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("imgclf").experiment_id
    stage_runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment])}
    stage_seconds = {stage: (run.info.end_time - run.info.start_time) / 1000
                     for stage, run in stage_runs.items() if stage != "tune-trial"}
    before_train = stage_runs["train"].info.start_time / 1000 - began

    def dvc(*args: str) -> float:
        began = time.perf_counter()
        subprocess.run([BIN / "dvc", *args], cwd=workdir, env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - began

    noop = interleave(lambda: dvc("version"), lambda: dvc("repro"), 5)
    return {"wall_s": wall, "test_accuracy": metrics["test"]["accuracy"],
            "before_train_s": before_train, "stage_s": stage_seconds,
            "val_best_accuracy": train_metrics["val"]["best_accuracy"],
            "train_s": train_metrics["train_seconds"], "tune_trials": tune_metrics["trials"],
            "peak_rss_bytes": memory.peaks, "noop_repro": noop, "log": log[-4000:]}


def bench_preset(project: Path, name: str = "long") -> dict:
    """``make exp PRESET=name`` on the pipeline's project (its data already prepared)."""
    from imgclf import presets
    from imgclf.common.settings import read_yaml

    path = ROOT / "presets" / f"{name}.yaml"
    _, values = presets.apply(read_yaml(project / "params.yaml"), read_yaml(path), str(path))
    env = user_env()
    started = time.perf_counter()
    done = subprocess.run([BIN / "dvc", "exp", "run", *(a for v in values for a in ("-S", v))],
                          cwd=project, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"dvc exp run failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    metrics = json.loads((project / "reports/metrics.json").read_text())
    train_metrics = json.loads((project / "reports/train_metrics.json").read_text())
    return {"name": name, "values": values, "wall_s": time.perf_counter() - started,
            "test_accuracy": metrics["test"]["accuracy"],
            "val_best_accuracy": train_metrics["val"]["best_accuracy"],
            "train_s": train_metrics["train_seconds"]}


# The default recipe under three seeds, then changes to it, each on its own, all at
# params.yaml's learning rate and batch size (the tuning baseline), so a tuning run's noise
# does not enter the comparison.
RECIPES = (
    {},
    {"seed": 1},  # the default under other seeds: the spread any change must beat
    {"seed": 2},
    {"model": "cnn"},  # the earlier default: one convolution at each size
    {"model": "cnn", "precision": "fp32"},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "seed": 1},
    {"width": 32, "batch_size": 256},
    {"width": 32, "batch_size": 256, "lr": 0.008},
    {"width": 16, "epochs": 20},
    {"augment": "crop_flip"},  # the long preset's augmentation, in the default's 13 epochs
    {"weight_decay": 0.1},
)


def bench_recipes(project: Path) -> list[dict]:
    """Train each of ``RECIPES`` on the pipeline project's splits: seconds, and validation and
    test accuracy (a recipe is chosen on validation; test is shown, never used to choose)."""
    data_dir = project / "data/processed"
    settings = load_settings(project / "params.yaml")
    meta = load_meta(data_dir)
    splits = {name: load_split(data_dir, name) for name in ("train", "val", "test")}
    rows = []
    for change in RECIPES:
        recipe = settings.train.model_copy(update=change)
        started = time.perf_counter()
        result = train(splits["train"], splits["val"], meta, recipe)
        seconds = time.perf_counter() - started
        rows.append({"change": change, "train_s": seconds, "epochs": recipe.epochs,
                     "width": recipe.width, "model": recipe.model,
                     "val_accuracy": result.kept.val_accuracy,
                     "test_accuracy": float(score(result.model, splits["test"],
                                                  recipe.eval_batch_size).accuracy)})
        print(f"  {change or 'default'}: {seconds:.0f} s, val {rows[-1]['val_accuracy']:.4f}",
              flush=True)
    return rows


def accuracy_over_time(workdir: Path, before_train_s: float) -> list[dict]:
    """Validation accuracy after each epoch of the pipeline's own training, on its clock.

    The train stage's per-epoch history gives each epoch's duration; ``before_train_s`` is
    when training started after ``dvc repro`` began.
    """
    with open(workdir / "reports/train_history.csv") as handle:
        history = list(csv.DictReader(handle))
    timeline, clock = [], before_train_s
    for row in history:
        clock += float(row["epoch_seconds"])
        timeline.append({"epoch": int(row["epoch"]), "wall_s": clock,
                         "val_accuracy": float(row["val/accuracy"])})
    return timeline


def bench_scaling(data_dir: Path) -> list[dict]:
    """Seconds per epoch at 10, 25, 50 and 100 % of the training split."""
    settings = load_settings(ROOT / "params.yaml")
    recipe = settings.train.model_copy(update={"epochs": 1})
    meta = load_meta(data_dir)
    train_split, val_split = load_split(data_dir, "train"), load_split(data_dir, "val")
    rows = []
    for fraction in (0.1, 0.25, 0.5, 1.0):
        subset = train_split.take(torch.arange(int(len(train_split) * fraction)))
        set_determinism(recipe.seed, recipe.threads, torch.device("cpu"))
        model = architecture(recipe, meta).build()
        result = fit(model, subset, Split(val_split.images[:0], val_split.labels[:0]), recipe,
                     device=torch.device("cpu"))
        seconds = len(subset) / result.history[0].images_per_s
        rows.append({"fraction": fraction, "images": len(subset), "epoch_s": seconds})
    return rows


# a realistic search: 144 trial-epochs unpruned; a trial may be pruned from its second epoch on
SEARCH_BUDGET = {"n_trials": 24, "epochs": 6, "warmup_epochs": 2}
SAMPLER_SEEDS = (0, 1, 2)


def search(settings: Settings, data_dir: Path, workdir: Path, experiment: str, name: str,
           **tune_values: object) -> dict:
    """Run one whole study of the tune stage's trials with ``tune_values`` changed, in this
    process; its seconds, trial-epochs, best validation accuracy and trial counts."""
    import mlflow

    chosen = settings.model_copy(update={"tune": settings.tune.model_copy(update={
        **tune_values, "study": name, "timeout_s": None})})
    storage = str(workdir / f"{name}.journal")
    study = studies.open_study(chosen.tune, storage, name)
    tune.enqueue_baseline(study, chosen)
    with mlflow.start_run(experiment_id=experiment) as parent:
        job = tune.Job(chosen, data_dir, workdir, storage, name, chosen.tune.n_trials,
                       parent.info.run_id, experiment, worker=0,
                       threads=chosen.train.threads or (os.cpu_count() or 1))
        started = time.perf_counter()
        tune.run_worker(job)
        seconds = time.perf_counter() - started
    study = studies.open_study(chosen.tune, storage, name)
    return {"seconds": seconds,
            "trial_epochs": sum(len(t.intermediate_values) for t in study.trials),
            "best_val_accuracy": study.best_value, "counts": studies.count_states(study),
            "best_trial": study.best_trial.number,
            "best_is_baseline": bool(study.best_trial.user_attrs.get("baseline", False))}


def bench_pruning(data_dir: Path, workdir: Path) -> dict:
    """Each pruner against no pruning at a realistic budget (``SEARCH_BUDGET``, same sampler
    seed), and TPE against the Gaussian-process sampler at the default budget over a few
    sampler seeds (one seed at four trials is a coin toss)."""
    from imgclf.tracking import store

    settings = load_settings(ROOT / "params.yaml")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["DVC_ROOT"] = str(workdir)
    experiment = store.connect("bench-pruning", workdir)
    pruners = {pruner: search(settings, data_dir, workdir, experiment, f"budget-{pruner}",
                              pruner=pruner, **SEARCH_BUDGET)
               for pruner in ("median", "hyperband", "none")}
    samplers = {sampler: [search(settings, data_dir, workdir, experiment,
                                 f"default-{sampler}-{seed}", sampler=sampler, sampler_seed=seed)
                          for seed in SAMPLER_SEEDS]
                for sampler in ("tpe", "gp")}
    # at the default budget the sampler picks one trial of four: compare them at the
    # realistic one too (TPE's search there is the median-pruned one above)
    samplers_at_budget = {"tpe": pruners["median"], "gp": search(
        settings, data_dir, workdir, experiment, "budget-gp", sampler="gp", pruner="median",
        **SEARCH_BUDGET)}
    del os.environ["DVC_ROOT"]
    return {"budget": SEARCH_BUDGET, "pruners": pruners,
            "default_budget": {"n_trials": settings.tune.n_trials,
                               "epochs": settings.tune.epochs,
                               "pruner": settings.tune.pruner,
                               "startup_trials": settings.tune.startup_trials},
            "samplers": samplers, "samplers_at_budget": samplers_at_budget}


def machine() -> dict:
    return {"cpu_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "training_precision": training_precision(torch.device("cpu"), "auto"),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d")}


SECTIONS = ("pipeline", "timeline", "data_path", "folders", "serving", "tracking", "scaling",
            "pruning")
OPTIONAL = ("preset", "recipes")  # long: only with --only (make bench-long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS + OPTIONAL,
                        help="rerun these sections, keeping the others' last results")
    args = parser.parse_args()
    repeats = 2 if args.quick else 3
    out = ROOT / "bench" / "results.json"
    kept = json.loads(out.read_text()) if out.exists() else {}
    results = kept if args.only else {k: v for k, v in kept.items() if k in OPTIONAL}
    results["machine"] = machine()
    # the pipeline's outputs (data, tuned values) feed the other sections
    workdir = ROOT / "bench" / "work"
    project = workdir / "project"
    if not args.only or "pipeline" in args.only:
        shutil.rmtree(workdir, ignore_errors=True)
        project.mkdir(parents=True)
    elif not (project / "dvc.lock").is_file() or "pipeline" not in kept:
        raise SystemExit(f"--only {' '.join(args.only)}: these sections use the project of a "
                         f"finished pipeline section, and {project} holds none; run `make bench` "
                         "first (or add pipeline to --only)")
    data_dir, raw_dir = project / "data/processed", project / "data/raw"
    sections = {
        "pipeline": lambda: bench_pipeline(project),
        "timeline": lambda: accuracy_over_time(project, results["pipeline"]["before_train_s"]),
        "data_path": lambda: bench_data_path(data_dir, raw_dir, 10000, repeats),
        "folders": lambda: folders(workdir / "folders", repeats),
        "serving": lambda: serving(project, workdir / "serving"),
        "tracking": lambda: bench_tracking(data_dir, 2, repeats + 2),  # small effect: more pairs
        "scaling": lambda: bench_scaling(data_dir),
        "pruning": lambda: bench_pruning(data_dir, workdir / "pruning"),
        "preset": lambda: bench_preset(project),
        "recipes": lambda: bench_recipes(project),
    }
    for name in args.only or SECTIONS:
        print(f"{name}...", flush=True)
        started = time.perf_counter()
        results[name] = sections[name]()
        results.setdefault("measured", {})[name] = time.strftime("%Y-%m-%d")
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
        write_json(out, results)  # keep what is done so far
    write_text(ROOT / "BENCHMARKS.md", report(results))
    print(f"wrote {out} and BENCHMARKS.md")


def serving(project: Path, workdir: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from bench.serving import bench_serving

    return bench_serving(project, workdir)


def folders(workdir: Path, repeats: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from bench.folders import bench_folders

    return bench_folders(workdir, repeats)


def report(results: dict) -> str:
    sys.path.insert(0, str(ROOT))
    from bench.report import render

    return render(results)


if __name__ == "__main__":
    main()
