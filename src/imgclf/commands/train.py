"""The train stage's work: fit the classifier, log it as an MLflow model and write its
metrics and curves. Its command line is in ``imgclf/train.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from imgclf.common.files import write_json, write_text
from imgclf.common.settings import Settings, load_settings
from imgclf.data.splits import Meta, Split, load_meta, load_split, split_digest
from imgclf.tracking.datasets import SplitDataset, split_dataset
from imgclf.tracking.models import log_classifier
from imgclf.tracking.runs import TUNED, StageRun, flatten, stage_run
from imgclf.tracking.starts import start_from
from imgclf.training import distributed
from imgclf.training.checkpoint import save_model
from imgclf.training.engine import (
    EpochStats,
    FitResult,
    deterministic_kernels,
    resolve_device,
    training_precision,
)
from imgclf.training.trainer import architecture, train
from imgclf.training.transfer import Start
from imgclf.tuning import best_params

INPUT_EXAMPLE_SIZE = 4


def history_csv(history: list[EpochStats]) -> str:
    """The per-epoch plot data DVC renders (``dvc plots show``)."""
    out = io.StringIO()
    fields = ["epoch", *history[0].metrics()] if history else ["epoch"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for stats in history:
        writer.writerow({"epoch": stats.epoch, **stats.metrics()})
    return out.getvalue()


def summary(result: FitResult, run_id: str) -> dict[str, Any]:
    """The DVC metrics file: the saved model's validation numbers, the best epoch's, and the
    MLflow run behind them."""
    best, kept = result.best, result.kept
    return {
        "val": {"accuracy": kept.val_accuracy, "loss": kept.val_loss,
                "best_accuracy": best.val_accuracy, "best_loss": best.val_loss},
        "kept_epoch": result.kept_epoch,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "train_seconds": round(sum(stats.seconds for stats in result.history), 2),
        "mlflow_run_id": run_id,
    }


def tracked_training(args: argparse.Namespace, settings: Settings, declared: Settings,
                     upstream: dict[str, str], meta: Meta, splits: tuple[Split, Split],
                     start: Start | None = None) -> None:
    """Train in the stage's MLflow run; log epochs, the model and the summaries; write the
    outputs."""
    recipe, (train_split, val_split) = settings.train, splits
    deps = [args.data, *([args.best_params] if args.best_params else [])]
    with stage_run("train", settings, upstream={**meta.lineage, **upstream},
                   data_version=meta.data_version, deps=deps, declared=declared) as run:
        run.log_params({"train_size": len(train_split), "val_size": len(val_split),
                        "hyperparams_from": str(args.best_params or args.params),
                        "deterministic_algorithms":
                            deterministic_kernels(resolve_device(recipe.device)),
                        "training_precision":
                            training_precision(resolve_device(recipe.device), recipe.precision),
                        "cudnn_benchmark": False})
        if start is not None:
            run.set_tags(start.tags)
        datasets = {name: split_dataset(meta, name, split_digest(args.data, name))
                    for name in ("train", "val")}
        run.log_datasets(datasets)
        logged: set[int] = set()

        def log_epoch(stats: EpochStats) -> None:
            run.log_metrics(stats.metrics(), step=stats.epoch)
            logged.add(stats.epoch)

        result = train(train_split, val_split, meta, recipe, on_epoch=log_epoch,
                       checkpoint=args.checkpoint, start=start)
        earlier = [stats for stats in result.history if stats.epoch not in logged]
        if earlier:  # resumed: this run also shows the epochs the interrupted run finished
            run.set_tags({"resumed_after_epoch": earlier[-1].epoch})
            for stats in earlier:
                run.log_metrics(stats.metrics(), step=stats.epoch)
        save_outputs(args, run, result, settings, declared, meta, (val_split, datasets["val"]))


def save_outputs(args: argparse.Namespace, run: StageRun, result: FitResult,
                 settings: Settings, declared: Settings, meta: Meta,
                 validation: tuple[Split, SplitDataset]) -> None:
    """Log the model with its validation scores; write the model, plots and metrics files."""
    recipe, best, kept = settings.train, result.best, result.kept
    val_split, val_dataset = validation
    arch = architecture(recipe, meta)
    info = {"mlflow_run_id": run.run_id, "data_version": meta.data_version,
            "lineage": run.lineage}
    with tempfile.TemporaryDirectory() as folder:  # the weights the logged model carries
        weights = Path(folder) / "weights.pt"
        save_model(weights, result.model, arch, info)
        logged = log_classifier(result.model, arch.preprocessing(), weights,
                                val_split.images[:INPUT_EXAMPLE_SIZE].numpy(),
                                flatten(settings, ("train",)), result.kept_epoch)
    # the logged model's own validation scores (its Models tab row)
    run.log_metrics({"best_epoch": result.best_epoch, "val/best_accuracy": best.val_accuracy,
                     "val/best_loss": best.val_loss, "kept_epoch": result.kept_epoch,
                     "val/kept_accuracy": kept.val_accuracy, "val/kept_loss": kept.val_loss},
                    step=result.kept_epoch, model_id=logged.model_id,
                    dataset=val_dataset)
    save_model(args.model, result.model, arch, {**info, "mlflow_model_uri": logged.model_uri,
                                                "mlflow_model_id": logged.model_id})
    run.log_used({key: flatten(settings, ("train",))[key] for key in TUNED}, declared)
    run.log_to_pipeline(metrics={"val/best_accuracy": best.val_accuracy,
                                 "val/kept_accuracy": kept.val_accuracy})
    run.link_model(logged.model_id, result.kept_epoch)
    write_text(args.plots, history_csv(result.history))
    write_json(args.metrics, summary(result, run.run_id))
    print(f"kept epoch {result.kept_epoch} ({recipe.keep}): val accuracy "
          f"{kept.val_accuracy:.4f}; best val accuracy {best.val_accuracy:.4f} at epoch "
          f"{result.best_epoch} (MLflow run {run.run_id})")


def execute(args: argparse.Namespace, argv: list[str]) -> int:
    """Train; ``argv`` is this command's, for the torchrun workers it launches."""
    declared = settings = load_settings(args.params)
    upstream: dict[str, str] = {}
    if args.best_params:
        tuned = best_params.read(args.best_params)
        settings, upstream = tuned.apply(declared, str(args.best_params)), tuned.lineage
    recipe = settings.train
    meta = load_meta(args.data)
    splits = load_split(args.data, "train"), load_split(args.data, "val")
    device = resolve_device(recipe.device)  # fail on a missing GPU before a run is opened
    # and on missing starting weights
    start = start_from(recipe.init, recipe.model, settings.tracking.experiment,
                       settings.download.online, settings.download.timeout_s)
    with distributed.process_group(recipe.processes, device, "imgclf.train", argv) as rank:
        if rank > 0:  # every process trains its shard; only the first tracks and writes
            train(*splits, meta, recipe, checkpoint=args.checkpoint, start=start)
        else:
            tracked_training(args, settings, declared, upstream, meta, splits, start)
    return 0
