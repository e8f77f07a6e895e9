"""The training engine: one loop shared by the train stage and every tuning trial.

:func:`fit` runs named steps: :func:`start` (optimizer, schedule, seeded generators),
:func:`restore` (continue from a :func:`snapshot`), :func:`run_epoch` (:func:`train_epoch`,
then :func:`score` on the validation split) and :func:`keep` (the epoch whose weights the
model ends with).

It knows nothing about MLflow, Optuna or files; callers observe progress through the
``on_epoch`` callback, which may raise to stop training (Optuna's pruning does).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from imgclf.common.errors import UserError
from imgclf.common.settings import TrainSettings
from imgclf.data.batches import batches
from imgclf.data.splits import Split
from imgclf.training.distributed import all_reduce, distributed

log = logging.getLogger(__name__)
MIN_STEPS = 10  # optimizer steps an epoch, at the least, on small training splits
MIN_BATCH = 16


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_s: float

    def metrics(self) -> dict[str, float]:
        """The MLflow metric names; ``val/accuracy`` is also the tuning objective, and
        ``lr_schedule`` the epoch's learning rate (not the ``train.lr`` param)."""
        return {
            "train/loss": self.train_loss, "train/accuracy": self.train_accuracy,
            "val/loss": self.val_loss, "val/accuracy": self.val_accuracy,
            "lr_schedule": self.lr, "epoch_seconds": self.seconds,
            "images_per_s": self.images_per_s,
        }


@dataclass
class FitResult:
    """The trained model, every epoch's numbers, the epoch with the best validation accuracy
    and the epoch whose weights the model holds (``recipe.keep``)."""

    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    kept_epoch: int = 0
    # the kept epoch's predicted class of each validation image (this process's shard); None
    # only when no epoch ran
    val_predictions: torch.Tensor | None = None

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]

    @property
    def kept(self) -> EpochStats:
        return self.history[self.kept_epoch - 1]


@dataclass(frozen=True)
class Scores:
    """A model's mean loss and accuracy on a split, and its predicted class per image."""

    loss: float
    accuracy: float
    predictions: torch.Tensor


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; under torchrun, this process's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available; "
                        "use 'auto' or 'cpu'")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def deterministic_kernels(device: torch.device) -> bool:
    """Whether :func:`set_determinism` switches torch to deterministic kernels on ``device``.

    Only on CUDA: CPU kernels already repeat exactly for a fixed thread count, and the switch
    imports torch's compiler stack (~2 s per process).
    """
    return device.type == "cuda"


def set_determinism(seed: int, threads: int, device: torch.device) -> None:
    """Seed every RNG and fix the thread count, so a run repeats exactly on the same machine.

    ``threads=0`` shares the cores among the data-parallel processes on this machine. On
    CUDA this also picks deterministic kernels (cuDNN's autotuned ones are not).
    """
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_processes))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    if deterministic_kernels(device):
        torch.use_deterministic_algorithms(True, warn_only=True)
        # it also fills every new tensor with NaN to expose reads of unset memory; that
        # costs time and changes no result (the flag lives on a module subclass torch installs
        # at import, which type checkers cannot see)
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def make_optimizer(model: nn.Module, recipe: TrainSettings) -> torch.optim.Optimizer:
    """The recipe's optimizer, updating all parameters with one multi-tensor kernel per
    operation (``foreach``): on CPU that takes a third less time per step than torch's
    default there, with identical results."""
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0,
                               foreach=True)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                foreach=True)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                             foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainSettings, total_steps: int
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-batch learning-rate schedule."""
    if recipe.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr,
                                                   total_steps=total_steps)
    if recipe.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


def autocast(device: torch.device) -> torch.autocast:
    """Scoring's precision: bf16 mixed precision on GPUs that support it; full precision (and
    exact) on CPU, so the scores match what the model server answers."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: GPUs that support it, and CPUs
    with AMX tiles (Intel Xeon since Sapphire Rapids), where training in bf16 takes about a
    quarter less time than in float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def training_precision(device: torch.device, precision: str) -> str:
    """``train.precision`` resolved: ``auto`` is ``bf16`` where :func:`native_bf16`, else
    ``fp32``."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def train_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The training steps' precision: bf16 mixed precision (weights, optimizer state and loss
    stay float32) or full float32."""
    enabled = training_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def score(model: nn.Module, split: Split, batch_size: int) -> Scores:
    """Mean cross-entropy, accuracy and the predicted class of every image.

    In data-parallel training each process scores its shard and the sums are all-reduced, so
    loss and accuracy cover the whole split (``predictions`` then holds the local shard's).
    """
    model.eval().to(memory_format=torch.channels_last)  # the batches' layout: ~2x faster on CPU
    rank, world = distributed()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    predictions = []
    for x, y in batches(split, batch_size * world, shard=(rank, world)):
        with autocast(x.device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        predicted = logits.argmax(dim=1)
        correct += (predicted == y).sum()
        predictions.append(predicted)
    total_loss, total_correct = all_reduce(loss_sum, correct)
    n = max(len(split), 1)
    predicted = torch.cat(predictions).cpu() if predictions else torch.zeros(0, dtype=torch.long)
    return Scores(total_loss / n, total_correct / n, predicted)


@dataclass
class Training:
    """What changes as training goes on: the optimisation state and what was measured."""

    model: nn.Module
    net: nn.Module  # the model, wrapped for data-parallel training across processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    augment_generator: torch.Generator
    batch_size: int
    steps_per_epoch: int
    result: FitResult
    best_state: dict[str, torch.Tensor] | None = None
    # the validation predictions of the last epoch and of the best one, for FitResult
    last_predictions: torch.Tensor | None = None
    best_predictions: torch.Tensor | None = None

    @property
    def best_accuracy(self) -> float:
        return self.result.best.val_accuracy if self.result.best_epoch else -1.0


def start(model: nn.Module, recipe: TrainSettings, device: torch.device, train_size: int
          ) -> Training:
    """The state before the first epoch: the model on ``device``, fresh optimizer, schedule
    and seeded generators."""
    model.to(device).to(memory_format=torch.channels_last)  # matches the batches' layout
    rank, world = distributed()
    # every process shuffles identically (their shards must tile each batch); augmentation
    # draws differ per process
    generator = torch.Generator().manual_seed(recipe.seed)
    augment_generator = torch.Generator().manual_seed(recipe.seed + 1 + rank)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, recipe)
    batch_size = batch_size_for(recipe.batch_size, train_size)
    steps_per_epoch = math.ceil(train_size / batch_size)
    scheduler = make_scheduler(optimizer, recipe, recipe.epochs * steps_per_epoch)
    return Training(model, net, optimizer, scheduler, generator, augment_generator,
                    batch_size, steps_per_epoch, FitResult(model))


def batch_size_for(batch_size: int, train_size: int) -> int:
    """``batch_size``, made smaller for a training split too small for ``MIN_STEPS`` steps
    an epoch (a folder of a few hundred images), but never below ``MIN_BATCH``."""
    return min(batch_size, max(MIN_BATCH, math.ceil(train_size / MIN_STEPS)))


def snapshot(training: Training, epoch: int) -> dict[str, Any]:
    """The complete state after ``epoch``: :func:`restore` continues exactly from it."""
    return {
        "epoch": epoch, "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": (training.scheduler.state_dict() if training.scheduler is not None
                      else None),
        "generator": training.generator.get_state(),
        "augment_generator": training.augment_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": [asdict(stats) for stats in training.result.history],
        "best_epoch": training.result.best_epoch, "best_state": training.best_state,
        "last_predictions": training.last_predictions,
        "best_predictions": training.best_predictions,
    }


def restore(training: Training, state: dict[str, Any]) -> int:
    """Load a :func:`snapshot` into ``training``; return the epoch it was taken after."""
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    if training.scheduler is not None:
        training.scheduler.load_state_dict(state["scheduler"])
    training.generator.set_state(state["generator"])
    training.augment_generator.set_state(state["augment_generator"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    training.result.history = [EpochStats(**stats) for stats in state["history"]]
    training.result.best_epoch = state["best_epoch"]
    training.best_state = state["best_state"]
    # absent from checkpoints written before they were kept
    training.last_predictions = state.get("last_predictions")
    training.best_predictions = state.get("best_predictions")
    return int(state["epoch"])


def train_epoch(training: Training, train: Split, recipe: TrainSettings, epoch: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over this process's shard of ``train``; the summed loss and correct count.

    Raises:
        DivergedError: the loss became NaN or infinite.
    """
    rank, world = distributed()
    device = train.labels.device
    training.model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    loader = batches(train, training.batch_size, generator=training.generator,
                     augment=recipe.augment, augment_generator=training.augment_generator,
                     shard=(rank, world), min_batch=2 * world)
    bar = tqdm(loader, total=training.steps_per_epoch, desc=f"epoch {epoch}/{recipe.epochs}",
               unit="batch", disable=not sys.stderr.isatty() or rank > 0, leave=False,
               file=sys.stderr)
    for step, (x, y) in enumerate(bar):
        with train_autocast(device, recipe.precision):
            logits = training.net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise DivergedError(f"training loss became {loss.item()} at epoch {epoch}, "
                                f"batch {step + 1}; lower train.lr")
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        if training.scheduler is not None:
            training.scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(dim=1) == y).sum()
    return loss_sum, correct


def run_epoch(training: Training, train: Split, val: Split, recipe: TrainSettings, epoch: int
              ) -> EpochStats:
    """Train one epoch, score the validation split, and record the epoch's numbers."""
    started = time.perf_counter()
    lr = training.optimizer.param_groups[0]["lr"]
    loss_sum, correct = train_epoch(training, train, recipe, epoch)
    train_seconds = time.perf_counter() - started
    total_loss, total_correct = all_reduce(loss_sum, correct)
    evaluated = score(training.model, val, recipe.eval_batch_size)
    stats = EpochStats(
        epoch=epoch,
        train_loss=total_loss / len(train),
        train_accuracy=total_correct / len(train),
        val_loss=evaluated.loss,
        val_accuracy=evaluated.accuracy,
        lr=lr,
        seconds=time.perf_counter() - started,
        images_per_s=len(train) / train_seconds,
    )
    training.result.history.append(stats)
    training.last_predictions = evaluated.predictions
    if stats.val_accuracy > training.best_accuracy:
        training.result.best_epoch = epoch
        training.best_predictions = evaluated.predictions
        if recipe.keep == "best":
            training.best_state = copy.deepcopy(training.model.state_dict())
    if distributed()[0] == 0:
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  "
                 "%.1fs (%.0f img/s)", epoch, recipe.epochs, stats.train_loss,
                 stats.train_accuracy, stats.val_loss, stats.val_accuracy, stats.seconds,
                 stats.images_per_s)
    return stats


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    recipe: TrainSettings,
    *,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    resume: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` per ``recipe``; the model ends with the last epoch's weights, or with
    ``recipe.keep == "best"`` those of the epoch with the best validation accuracy.

    Under a schedule that anneals the learning rate the last epoch is the better pick: an
    earlier best validation epoch mostly wins by the noise of the validation sample.

    ``on_checkpoint`` receives the complete training state after every epoch (weights,
    optimizer, schedule, random generators, history); passing such a state back as ``resume``
    continues exactly where it stopped, so an interrupted run ends with the same result.

    Raises:
        DivergedError: the loss became NaN or infinite (learning rate too high).
    """
    training = start(model, recipe, device, len(train))
    train, val = train.to(device), val.to(device)
    first_epoch = 1
    if resume is not None:
        first_epoch = restore(training, resume) + 1
        log.info("resuming after epoch %d of %d", first_epoch - 1, recipe.epochs)
    for epoch in range(first_epoch, recipe.epochs + 1):
        stats = run_epoch(training, train, val, recipe, epoch)
        if on_epoch is not None:
            on_epoch(stats)
        if on_checkpoint is not None and distributed()[0] == 0:
            on_checkpoint(snapshot(training, epoch))
    return keep(training, recipe.keep)


def keep(training: Training, which: str) -> FitResult:
    """The result, its model holding the ``last`` epoch's weights or the ``best`` one's."""
    result = training.result
    if which == "best" and training.best_state is not None:
        training.model.load_state_dict(training.best_state)
        result.kept_epoch = result.best_epoch
        result.val_predictions = training.best_predictions
    else:
        result.kept_epoch = len(result.history)
        result.val_predictions = training.last_predictions
    training.model.eval()
    return result
