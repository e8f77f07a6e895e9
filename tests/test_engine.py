"""The training engine: optimisers and schedules from the recipe, scoring, and a fit that
can be interrupted and restored without changing its result."""

from __future__ import annotations

import copy

import pytest
import torch

from imgclf.common.errors import UserError
from imgclf.common.settings import TrainSettings, parse_settings
from imgclf.data.splits import Split
from imgclf.training import engine
from imgclf.training.models import build_model

from .conftest import learnable_images, repo_params

SHAPE = (1, 28, 28)


def recipe(**changes) -> TrainSettings:
    base = parse_settings(repo_params()).train
    return base.model_copy(update={"model": "mlp", "width": 4, "epochs": 3, "batch_size": 32,
                                   "lr": 0.01, "threads": 1, "device": "cpu", "tta": "none",
                                   "augment": "crop_flip", **changes})


def splits(n: int = 160, seed: int = 0) -> tuple[Split, Split]:
    return (Split(*learnable_images(n, 10, SHAPE, seed)),
            Split(*learnable_images(60, 10, SHAPE, seed + 1)))


def fresh_model(cfg: TrainSettings) -> torch.nn.Module:
    engine.set_determinism(cfg.seed, cfg.threads, torch.device("cpu"))
    return build_model(cfg.model, SHAPE, 10, cfg.width, [0.1], [0.3])


def without_timing(history):
    return [(s.epoch, s.train_loss, s.train_accuracy, s.val_loss, s.val_accuracy, s.lr)
            for s in history]


@pytest.mark.parametrize("keep", ["last", "best"])
def test_a_fit_interrupted_and_restored_equals_an_uninterrupted_one(keep):
    cfg = recipe(model="cnn", keep=keep, label_smoothing=0.1)  # dropout draws from torch's RNG
    train, val = splits()
    snapshots = {}
    whole = engine.fit(fresh_model(cfg), train, val, cfg, device=torch.device("cpu"),
                       on_checkpoint=lambda s: snapshots.update({s["epoch"]: copy.deepcopy(s)}))

    # another process: the same seed set up again, then the state saved after epoch 1
    resumed_epochs = []
    resumed = engine.fit(fresh_model(cfg), train, val, cfg, device=torch.device("cpu"),
                         resume=snapshots[1],
                         on_epoch=lambda stats: resumed_epochs.append(stats.epoch))

    assert resumed_epochs == [2, 3]
    assert without_timing(resumed.history) == without_timing(whole.history)
    assert (resumed.best_epoch, resumed.kept_epoch) == (whole.best_epoch, whole.kept_epoch)
    # the kept epoch's validation answers survive the interruption too
    assert resumed.val_predictions is not None and whole.val_predictions is not None
    assert torch.equal(resumed.val_predictions, whole.val_predictions)
    for (name, a), b in zip(whole.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_snapshot_holds_everything_restore_needs():
    cfg = recipe()
    train, _ = splits()
    training = engine.start(fresh_model(cfg), cfg, torch.device("cpu"), len(train))
    state = engine.snapshot(training, 0)
    other = engine.start(fresh_model(cfg), cfg, torch.device("cpu"), len(train))
    other.generator.manual_seed(123)
    assert engine.restore(other, state) == 0
    assert torch.equal(other.generator.get_state(), training.generator.get_state())
    assert other.optimizer.state_dict()["param_groups"] == \
        training.optimizer.state_dict()["param_groups"]


def test_score_is_the_mean_loss_accuracy_and_predictions():
    model = build_model("mlp", SHAPE, 10, 4, [0.1], [0.3]).eval()
    _, val = splits()
    scores = engine.score(model, val, batch_size=7)  # batches that do not divide the split
    with torch.no_grad():
        logits = model(val.images.float() / 255)
    assert torch.equal(scores.predictions, logits.argmax(dim=1))
    assert scores.accuracy == pytest.approx((logits.argmax(dim=1) == val.labels).float().mean())
    assert scores.loss == pytest.approx(
        torch.nn.functional.cross_entropy(logits, val.labels).item(), rel=1e-5)


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                            ("adamw", torch.optim.AdamW)])
def test_optimizer_comes_from_the_recipe(name, kind):
    cfg = recipe(optimizer=name, weight_decay=0.02, momentum=0.8)
    optimizer = engine.make_optimizer(fresh_model(cfg), cfg)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == cfg.lr and group["weight_decay"] == 0.02 and group["foreach"]
    if name == "sgd":
        assert group["momentum"] == 0.8 and group["nesterov"]


def test_schedules_come_from_the_recipe():
    cfg = recipe(scheduler="onecycle")
    optimizer = engine.make_optimizer(fresh_model(cfg), cfg)
    schedule = engine.make_scheduler(optimizer, cfg, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert max(rates) == pytest.approx(cfg.lr) and rates[0] < cfg.lr / 10 and rates[-1] < rates[5]
    assert engine.make_scheduler(optimizer, recipe(scheduler="none"), 10) is None
    assert isinstance(engine.make_scheduler(optimizer, recipe(scheduler="cosine"), 10),
                      torch.optim.lr_scheduler.CosineAnnealingLR)


def test_a_diverging_loss_stops_training_with_the_fix():
    cfg = recipe(lr=1e30, optimizer="sgd", scheduler="none", augment="none")
    train, val = splits()
    with pytest.raises(engine.DivergedError, match=r"at epoch 1, batch \d+; lower train\.lr"):
        engine.fit(fresh_model(cfg), train, val, cfg, device=torch.device("cpu"))


def test_missing_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device is available; use 'auto' or 'cpu'"):
        engine.resolve_device("cuda")
    assert not engine.deterministic_kernels(torch.device("cpu"))


@pytest.mark.parametrize(("keep", "kept_epoch"), [("last", 3), ("best", 2)])
def test_model_holds_the_weights_of_the_kept_epoch(monkeypatch, keep, kept_epoch):
    # validation scores that peak before the last epoch, as validation noise often makes them
    scores = iter([0.5, 0.9, 0.7])

    def scripted(model, split, batch_size):
        return engine.Scores(loss=1.0, accuracy=next(scores), predictions=split.labels)

    monkeypatch.setattr(engine, "score", scripted)
    cfg = recipe(keep=keep)
    train, val = splits()
    states = {}
    result = engine.fit(fresh_model(cfg), train, val, cfg, device=torch.device("cpu"),
                        on_checkpoint=lambda state: states.update(
                            {state["epoch"]: copy.deepcopy(state["model"])}))
    assert (result.best_epoch, result.kept_epoch) == (2, kept_epoch)
    assert result.kept.val_accuracy == [0.5, 0.9, 0.7][kept_epoch - 1]
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, states[kept_epoch][name]), name


@pytest.mark.parametrize("keep", ["last", "best"])
def test_the_result_holds_the_kept_epochs_validation_predictions(keep):
    cfg = recipe(model="cnn", keep=keep)
    train, val = splits()
    result = engine.fit(fresh_model(cfg), train, val, cfg, device=torch.device("cpu"))
    assert result.val_predictions is not None
    # what scoring the kept model again would give, without scoring it again
    assert torch.equal(result.val_predictions, engine.score(result.model, val, 64).predictions)
    assert (result.val_predictions == val.labels).float().mean().item() == pytest.approx(
        result.kept.val_accuracy)


def test_small_training_splits_get_smaller_batches_for_enough_steps():
    assert engine.batch_size_for(128, 54000) == 128  # the built-in datasets: unchanged
    assert engine.batch_size_for(128, 300) == 30
    assert engine.batch_size_for(128, 40) == engine.MIN_BATCH
    assert engine.batch_size_for(8, 40) == 8


def test_a_split_that_leaves_one_image_over_still_trains():
    # 161 = 10 x 16 + 1; on 8x8 images the last block's map is 1x1, and batch norm cannot
    # train on a single value per channel
    cfg = recipe(model="cnn", batch_size=16, epochs=1, augment="none")
    generator = torch.Generator().manual_seed(0)
    train, val = (Split(torch.randint(0, 255, (n, 1, 8, 8), dtype=torch.uint8,
                                      generator=generator), torch.arange(n) % 10)
                  for n in (161, 20))
    engine.set_determinism(0, 1, torch.device("cpu"))
    model = build_model("cnn", (1, 8, 8), 10, 4, [0.5], [0.3])
    result = engine.fit(model, train, val, cfg, device=torch.device("cpu"))
    assert len(result.history) == 1


def test_precision_auto_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch):
    cpu = torch.device("cpu")
    assert engine.training_precision(cpu, "fp32") == "fp32"
    assert engine.training_precision(cpu, "bf16") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert engine.training_precision(cpu, "auto") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert engine.training_precision(cpu, "auto") == "bf16"


def test_bf16_training_learns_and_repeats_exactly_on_cpu():
    cfg = recipe(model="convnet", precision="bf16", epochs=4, lr=0.02, augment="none")
    train, val = splits(320)

    def run() -> engine.FitResult:
        return engine.fit(fresh_model(cfg), train, val, cfg, device=torch.device("cpu"))

    first, second = run(), run()
    assert without_timing(first.history) == without_timing(second.history)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert first.best.val_accuracy > 0.5  # ten classes: chance is 0.1
    full = engine.fit(fresh_model(cfg), train, val, cfg.model_copy(update={"precision": "fp32"}),
                      device=torch.device("cpu"))
    assert not torch.equal(full.model.state_dict()["1.0.weight"],  # the setting takes effect
                           first.model.state_dict()["1.0.weight"])
