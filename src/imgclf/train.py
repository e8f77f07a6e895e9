"""Stage 4: train the classifier; save the last epoch's weights (or, with ``train.keep:
best``, the epoch with the best validation accuracy).

With ``--best-params`` the learning rate and batch size come from the tune stage.

    python -m imgclf.train --params params.yaml --data data/processed \\
        --model models/model.pt --metrics reports/train_metrics.json \\
        --plots reports/train_history.csv --best-params reports/best_params.yaml
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from imgclf import tracking
from imgclf.checkpoint import (
    Architecture,
    load_training_state,
    save_model,
    save_training_state,
)
from imgclf.cli import run_process, stage_parser
from imgclf.data import Meta, Split, load_meta, load_split
from imgclf.engine import (
    EpochStats,
    FitResult,
    deterministic_kernels,
    distributed,
    fit,
    resolve_device,
    set_determinism,
)
from imgclf.files import write_json, write_text
from imgclf.settings import TrainSettings, apply_best_params, load_settings, read_lineage

INPUT_EXAMPLE_SIZE = 4


def architecture(recipe: TrainSettings, meta: Meta) -> Architecture:
    return Architecture(recipe.model, recipe.width, meta.image_shape, meta.classes,
                        meta.mean, meta.std, recipe.tta)


def train(
    train_split: Split,
    val_split: Split,
    meta: Meta,
    recipe: TrainSettings,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint: Path | None = None,
) -> FitResult:
    """Build the network ``recipe`` names and train it; the core the tuner calls too.

    With a ``checkpoint`` path the training state is saved there after every epoch, and a
    state left by an interrupted run of the same recipe on the same data is resumed.
    """
    device = resolve_device(recipe.device)
    set_determinism(recipe.seed, recipe.threads, device)
    model = architecture(recipe, meta).build()
    if checkpoint is None:
        return fit(model, train_split, val_split, recipe, device=device, on_epoch=on_epoch)
    key = training_key(recipe, meta, len(train_split))
    result = fit(model, train_split, val_split, recipe, device=device, on_epoch=on_epoch,
                 resume=load_training_state(checkpoint, key),
                 on_checkpoint=lambda state: save_training_state(checkpoint, key, state))
    if distributed()[0] == 0:
        checkpoint.unlink(missing_ok=True)  # finished: nothing left to resume
    return result


def training_key(recipe: TrainSettings, meta: Meta, train_size: int) -> str:
    """Identifies a training run's inputs, so only the same run is ever resumed.

    It covers ``train.keep`` too: only a ``keep: best`` run's states hold the best weights.
    """
    inputs = {"recipe": recipe.model_dump(mode="json", exclude={"device"}),
              "meta": asdict(meta) | {"lineage": None}, "train_size": train_size}
    return hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def history_csv(history: list[EpochStats]) -> str:
    """The per-epoch plot data DVC renders (``dvc plots show``)."""
    out = io.StringIO()
    fields = ["epoch", *history[0].metrics()] if history else ["epoch"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for stats in history:
        writer.writerow({"epoch": stats.epoch, **stats.metrics()})
    return out.getvalue()


def summary(result: FitResult, run_id: str) -> dict:
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


def relaunch_with_torchrun(processes: int, argv: list[str]) -> None:
    """Replace this process by ``torchrun`` running ``processes`` copies of this stage."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "imgclf.train", *argv]
    print(f"data-parallel training on {processes} processes: {' '.join(command[1:])}",
          flush=True)
    os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder from preprocess")
    parser.add_argument("--model", type=Path, required=True, help="output model file")
    parser.add_argument("--metrics", type=Path, required=True, help="output DVC metrics file")
    parser.add_argument("--plots", type=Path, required=True, help="output per-epoch CSV")
    parser.add_argument("--best-params", type=Path,
                        help="the tune stage's file; its train.lr and train.batch_size win")
    parser.add_argument("--checkpoint", type=Path,
                        help="per-epoch training state to resume from after an interruption")
    args = parser.parse_args(argv)

    declared = settings = load_settings(args.params)
    upstream: dict[str, str] = {}
    if args.best_params:
        settings = apply_best_params(declared, args.best_params)
        upstream = read_lineage(args.best_params)
    recipe = settings.train
    meta = load_meta(args.data)
    train_split, val_split = load_split(args.data, "train"), load_split(args.data, "val")
    device = resolve_device(recipe.device)  # fail on a missing GPU before a run is opened
    launched = "TORCHELASTIC_RUN_ID" in os.environ  # started by torchrun
    if recipe.processes > 1 and not launched:
        relaunch_with_torchrun(recipe.processes, sys.argv[1:] if argv is None else argv)
    if launched:
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo")
        if torch.distributed.get_rank() > 0:
            # every process trains its shard; only the first tracks and writes outputs
            train(train_split, val_split, meta, recipe, checkpoint=args.checkpoint)
            torch.distributed.destroy_process_group()
            return 0

    deps = [args.data, *([args.best_params] if args.best_params else [])]
    with tracking.stage_run("train", settings, upstream={**meta.lineage, **upstream},
                            data_version=meta.data_version, deps=deps,
                            declared=declared) as run:
        run.log_params({"train_size": len(train_split), "val_size": len(val_split),
                        "hyperparams_from": str(args.best_params or args.params),
                        "deterministic_algorithms": deterministic_kernels(device),
                        "cudnn_benchmark": False})
        logged: set[int] = set()

        def log_epoch(stats: EpochStats) -> None:
            run.log_metrics(stats.metrics(), step=stats.epoch)
            logged.add(stats.epoch)

        result = train(train_split, val_split, meta, recipe, on_epoch=log_epoch,
                       checkpoint=args.checkpoint)
        earlier = [stats for stats in result.history if stats.epoch not in logged]
        if earlier:  # resumed: this run also shows the epochs the interrupted run finished
            run.set_tags({"resumed_after_epoch": earlier[-1].epoch})
            for stats in earlier:
                run.log_metrics(stats.metrics(), step=stats.epoch)
        best, kept = result.best, result.kept
        run.log_metrics({"best_epoch": result.best_epoch, "val/best_accuracy": best.val_accuracy,
                         "val/best_loss": best.val_loss, "kept_epoch": result.kept_epoch,
                         "val/kept_accuracy": kept.val_accuracy})
        model_uri = run.log_model(result.model, val_split.images[:INPUT_EXAMPLE_SIZE]
                                  .float().div(255).numpy())
        save_model(args.model, result.model, architecture(recipe, meta),
                   {"mlflow_run_id": run.run_id, "mlflow_model_uri": model_uri,
                    "data_version": meta.data_version, "lineage": run.lineage})
        run.log_to_pipeline(metrics={"val/best_accuracy": best.val_accuracy,
                                     "val/kept_accuracy": kept.val_accuracy},
                            params={"tuned/lr": recipe.lr,
                                    "tuned/batch_size": recipe.batch_size})
        write_text(args.plots, history_csv(result.history))
        write_json(args.metrics, summary(result, run.run_id))
        print(f"kept epoch {result.kept_epoch} ({recipe.keep}): val accuracy "
              f"{kept.val_accuracy:.4f}; best val accuracy {best.val_accuracy:.4f} at epoch "
              f"{result.best_epoch} (MLflow run {run.run_id})")
    if launched:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_process(main)
