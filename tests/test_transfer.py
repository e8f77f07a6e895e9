"""torchvision backbones, starting from earlier weights, and training only the head."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
import torchvision
from torch import nn

from imgclf.common.errors import UserError
from imgclf.common.settings import load_settings
from imgclf.tracking.models import log_classifier
from imgclf.tracking.registry import register_model
from imgclf.tracking.runs import stage_run
from imgclf.tracking.starts import start_from
from imgclf.training import transfer
from imgclf.training.checkpoint import Architecture, save_model
from imgclf.training.models import build_model, head
from imgclf.training.transfer import StartError, apply_start, file_start, freeze_backbone

TORCHVISION = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")


@pytest.mark.parametrize("name", TORCHVISION)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 16), (3, 64, 64)])
def test_torchvision_models_take_small_grey_or_colour_images(name, shape):
    model = build_model(name, shape, 7, 16, [0.5] * shape[0], [0.25] * shape[0]).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)
    network = model[1]
    stem = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == shape[0]
    assert stem.stride == ((1, 1) if shape[1] < 64 else (2, 2))
    if name == "resnet18":
        assert isinstance(network.maxpool, nn.Identity) == (shape[1] < 64)
    assert head(network).out_features == 7


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache."""
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(str(tmp_path / "unused"))


def test_imagenet_weights_missing_offline_fail_naming_file_folder_and_url(hub):
    with pytest.raises(StartError) as raised:
        start_from("imagenet", "resnet18", "tests")  # download.online: false
    message = str(raised.value)
    assert "resnet18-f37072fd.pth" in message and str(hub) in message
    assert "download.online is false" in message
    assert transfer.weights_url("resnet18") in message
    assert not hub.exists() or list(hub.iterdir()) == []


def _fake_imagenet(hub, name: str) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's own layout, under the file name the cache uses."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    state = torchvision.models.get_model(name, weights=None).state_dict()
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(state, hub / url.rsplit("/", 1)[-1])
    return state


def test_imagenet_weights_are_checked_against_the_hash_in_their_name(hub):
    _fake_imagenet(hub, "mobilenet_v3_small")
    with pytest.raises(StartError, match="does not match the hash in its name"):
        start_from("imagenet", "mobilenet_v3_small", "tests")
    assert list(hub.iterdir()) == []  # the damaged file is removed, not used next time


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A web server on 127.0.0.1 publishing self-made mobilenet_v3_small weights as
    torchvision does (the file name ends in its SHA-256's first 8 hex digits), with
    ``weights_url`` pointed at it. Yields the published file."""
    import functools
    import hashlib
    import http.server
    import threading

    folder = tmp_path / "published"
    folder.mkdir()
    torch.manual_seed(0)
    state = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    torch.save(state, folder / "weights.pth")
    digest = hashlib.sha256((folder / "weights.pth").read_bytes()).hexdigest()
    name = f"mobilenet_v3_small-{digest[:8]}.pth"
    (folder / "weights.pth").rename(folder / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(transfer, "weights_url",
                        lambda model: f"http://127.0.0.1:{server.server_port}/{name}")
    yield folder / name
    server.shutdown()
    server.server_close()


def test_imagenet_weights_are_downloaded_into_an_empty_cache_and_train(
        hub, weights_server, processed, project, set_params, client):
    from imgclf import train
    from imgclf.common.cli import run_stage

    from .conftest import TRAIN_ARGS, runs_of

    published = weights_server
    set_params(train__model="mobilenet_v3_small", train__init="imagenet", train__epochs=1,
               download__online=True)
    assert run_stage(train.main, TRAIN_ARGS) == 0
    assert [p.name for p in hub.iterdir()] == [published.name]  # cached, no partial file
    assert (hub / published.name).read_bytes() == published.read_bytes()
    (run,) = runs_of(client, "train")
    assert run.data.tags["init_from"] == "imagenet"
    assert run.data.tags["init_file"] == published.name
    # the next start finds the file in the cache: nothing is downloaded again
    published.unlink()
    start = start_from("imagenet", "mobilenet_v3_small", "tests", online=True)
    assert start.path == hub / published.name


def test_a_tampered_download_is_refused_and_not_kept(hub, weights_server):
    published = weights_server
    published.write_bytes(published.read_bytes()[:-10] + b"tampered!!")
    with pytest.raises(StartError, match="the downloaded file does not match the hash"):
        start_from("imagenet", "mobilenet_v3_small", "tests", online=True)
    assert list(hub.iterdir()) == []  # nothing half-written or damaged in the cache


def test_an_unreachable_server_fails_fast_naming_the_url(hub, monkeypatch):
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mobilenet_v3_small-00000000.pth"
    monkeypatch.setattr(transfer, "weights_url", lambda model: url)
    began = time.monotonic()
    with pytest.raises(StartError) as raised:
        start_from("imagenet", "mobilenet_v3_small", "tests", online=True, timeout_s=5)
    assert time.monotonic() - began < 5
    message = str(raised.value)
    assert f"cannot download {url}" in message and str(hub) in message
    assert not hub.exists() or list(hub.iterdir()) == []


def test_imagenet_backbone_loads_with_a_grey_stem_and_a_new_head(hub, monkeypatch):
    source = _fake_imagenet(hub, "mobilenet_v3_small")
    monkeypatch.setattr(transfer, "HASH_PREFIX", transfer.re.compile(r"^$"))  # self-made file
    start = start_from("imagenet", "mobilenet_v3_small", "tests")
    assert start.tags["init_from"] == "imagenet" and len(start.tags["init_sha256"]) == 64
    model = build_model("mobilenet_v3_small", (1, 28, 28), 4, 16, [0.5], [0.25])
    done = apply_start(model, start)
    assert done["init_head_replaced"]
    net = model[1].state_dict()
    assert torch.equal(net["features.0.0.weight"], source["features.0.0.weight"].sum(1, True))
    assert torch.equal(net["features.3.block.0.0.weight"], source["features.3.block.0.0.weight"])
    assert net["classifier.3.weight"].shape == (4, 1024)


def test_resnet_small_stem_starts_afresh_from_imagenet(hub, monkeypatch):
    source = _fake_imagenet(hub, "resnet18")
    monkeypatch.setattr(transfer, "HASH_PREFIX", transfer.re.compile(r"^$"))
    model = build_model("resnet18", (3, 32, 32), 10, 16, [0.5] * 3, [0.25] * 3)
    done = apply_start(model, start_from("imagenet", "resnet18", "tests"))
    assert done["init_reinitialised"] == "conv1.weight"
    assert torch.equal(model[1].state_dict()["layer1.0.conv1.weight"],
                       source["layer1.0.conv1.weight"])


def _saved(tmp_path, arch: Architecture, name: str = "parent.pt", **info):
    torch.manual_seed(1)
    model = arch.build()
    save_model(tmp_path / name, model, arch, info)
    return tmp_path / name, model


def test_a_trained_model_starts_another_with_other_classes(tmp_path):
    parent = Architecture("cnn", 4, [1, 28, 28], [str(i) for i in range(10)], [0.2], [0.3],
                          tta="flip")
    path, trained = _saved(tmp_path, parent, mlflow_run_id="abc")
    start = file_start(path, str(path), "cnn")
    assert start.tags["lineage.init"] == "abc" and start.tags["init_run_id"] == "abc"
    child = build_model("cnn", (1, 28, 28), 3, 4, [0.5], [0.5])
    assert apply_start(child, start)["init_head_replaced"]
    mine, theirs = child[1].state_dict(), trained.net[1].state_dict()
    assert torch.equal(mine["0.weight"], theirs["0.weight"])
    assert mine["17.weight"].shape == (3, 32)  # the head: new classes
    assert child[0].mean.item() == 0.5  # normalisation comes from the new data


def test_a_start_of_another_kind_or_shape_is_a_clear_error(tmp_path):
    path, _ = _saved(tmp_path, Architecture("cnn", 4, [1, 28, 28], ["a", "b"], [0.2], [0.3]))
    with pytest.raises(StartError, match=r"it is a cnn model, but train\.model is mlp"):
        file_start(path, str(path), "mlp")
    wider = build_model("cnn", (1, 28, 28), 2, 8, [0.5], [0.5])
    with pytest.raises(StartError, match=r"tensor '0.weight' is \[4, 1, 3, 3\] there but "
                                         r"\[8, 1, 3, 3\] here"):
        apply_start(wider, file_start(path, str(path), "cnn"))


def test_a_frozen_backbone_trains_only_the_head_and_keeps_its_statistics():
    model = build_model("cnn", (1, 28, 28), 3, 4, [0.5], [0.5])
    freeze_backbone(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.arange(8) % 3)
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"1.17.weight", "1.17.bias"}


def test_a_registered_model_is_a_start_that_records_its_version(project, client, tmp_path):
    settings = load_settings(project / "params.yaml")
    arch = Architecture("cnn", 4, [1, 28, 28], [str(i) for i in range(10)], [0.2], [0.3])
    path, model = _saved(tmp_path, arch, mlflow_run_id="parent-run")
    with stage_run("train", settings):
        uri = log_classifier(model, arch.preprocessing(), path,
                             torch.zeros(1, 1, 28, 28, dtype=torch.uint8).numpy(), {}, 1).model_uri
    register_model("clf", uri, {}, lambda champion, version: (True, {}))
    start = start_from("models:/clf@champion", "cnn", "tests")
    assert start.tags["init_model"] == "clf" and start.tags["init_version"] == "1"
    assert start.tags["lineage.init"] == "parent-run"
    assert start_from("models:/clf/1", "cnn", "tests").tags["init_version"] == "1"
    with pytest.raises(StartError, match=r"train\.model is resnet18"):
        start_from("models:/clf@champion", "resnet18", "tests")
    with pytest.raises(UserError, match=r"train\.init: cannot load model models:/nope"):
        start_from("models:/nope@champion", "cnn", "tests")


@pytest.mark.slow
def test_fine_tuning_the_registered_model_beats_random_init_on_a_small_budget(tmp_path):
    from PIL import Image

    from imgclf.commands.preprocess import read_idx

    from .conftest import FMNIST_DIR, dvc, make_repo

    if not FMNIST_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is missing")
    repo = make_repo(tmp_path / "repo", **{"tune.enabled": False})
    dvc(repo, "repro")  # pretrain on a Fashion-MNIST subset; evaluate registers the champion
    # a folder dataset of five classes the pretrained model never had, from unseen images
    groups = {0: "tops", 6: "tops", 2: "warm", 4: "warm", 5: "shoes", 7: "shoes",
              1: "long", 3: "long", 8: "carry", 9: "carry"}
    images = read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    for i in range(400):
        folder = tmp_path / "garments" / groups[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].numpy()).save(folder / f"{i}.png")
    common = ["-S", "data.dataset=folder", "-S", f"data.path={tmp_path / 'garments'}",
              "-S", "data.train_limit=null", "-S", "data.test_limit=null",
              "-S", "train.epochs=1"]
    scores = {}
    for init in ("models:/fashion-mnist-classifier@champion", "random"):
        dvc(repo, "exp", "run", *common, "-S", f"train.init={init}")
        scores[init] = json.loads((repo / "reports/metrics.json").read_text())["test"]
    tuned, scratch = scores.values()
    assert tuned["accuracy"] > scratch["accuracy"] + 0.1 and tuned["loss"] < scratch["loss"]

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id],
                              "tags.stage = 'train' and tags.init_from != ''")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["init_model"] == "fashion-mnist-classifier" and tags["init_version"] == "1"
    parent = client.get_run(tags["lineage.init"])  # the lineage walk reaches the parent
    assert parent.data.tags["stage"] == "train" and parent.data.tags["dataset"] == "fashion-mnist"
