"""Starting a network from earlier weights (``train.init``): torchvision's ImageNet weights
from torch's hub cache, or another trained model's, then fine-tuning all of it or only its
head (``train.freeze``).

ImageNet weights missing from the cache are downloaded only when ``download.online`` allows
it, by torch's own download (into a temporary file that becomes the cached one only once its
SHA-256 matches the prefix in torchvision's file name). The backbone's weights are loaded; a
head whose class count differs is replaced (it starts random); a grey model's first
convolution gets the sum of an RGB one's kernels. Any other shape mismatch is an error
naming the tensor.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import socket
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from imgclf.common.errors import UserError, one_line
from imgclf.common.tensorfiles import load_tensors
from imgclf.training.models import FlipAveraging, Normalize, head

HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision's file names end in a hash prefix

log = logging.getLogger(__name__)


class StartError(UserError):
    """Weights that cannot start this network; the message names the tensor and the fix."""


@dataclass(frozen=True)
class Start:
    """The weights a training run starts from, and what its MLflow run records about them."""

    path: Path
    source: str  # "imagenet", a model URI or a file path, as train.init gives it
    imagenet: bool = False
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.tags.get("init_sha256", "")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_url(model: str) -> str:
    """Where torchvision publishes ``model``'s ImageNet weights."""
    return str(torchvision.models.get_model_weights(model).DEFAULT.url)


def imagenet_start(model: str, online: bool = False, timeout_s: float = 60) -> Start:
    """torchvision's ImageNet weights for ``model``, from torch's hub cache; downloaded into
    it first when they are missing and ``online``.

    Raises:
        StartError: the file is not there and cannot be downloaded (naming it, the folder and
            the URL), or its content does not match the hash in its name (the file is
            removed, so that nothing damaged stays in the cache).
    """
    url = weights_url(model)
    name = url.rsplit("/", 1)[-1]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / name
    found = HASH_PREFIX.search(name)
    prefix = found.group(1) if found else None
    if path.is_file() and prefix and not sha256(path).startswith(prefix):
        path.unlink()
        if not online:
            raise StartError(f"{path}: its content does not match the hash in its name "
                             f"({prefix}); the damaged file was removed: copy it again (it is "
                             f"{url}), or set download.online: true")
        log.warning("%s did not match the hash in its name; removed it, downloading again",
                    path)
    if not path.is_file():
        if not online:
            raise StartError(f"train.init: imagenet needs torchvision's {model} weights, {name}, "
                             f"in {folder}; download.online is false, so nothing is downloaded: "
                             f"copy the file there (it is {url}), set download.online: true, or "
                             "set train.init: random")
        download(url, path, prefix, timeout_s)
    return Start(path, "imagenet", imagenet=True,
                 tags={"init_from": "imagenet", "init_file": name, "init_sha256": sha256(path)})


def download(url: str, path: Path, prefix: str | None, timeout_s: float) -> None:
    """``url`` into ``path`` with torch's download (a progress bar on a terminal), checked
    against the SHA-256 ``prefix``; no connection waits more than ``timeout_s``.

    Raises:
        StartError: unreachable, cut short or not matching; nothing is left at ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", url, path.parent)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # torch's download has no timeout of its own
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix,
                                       progress=sys.stderr.isatty())
    except RuntimeError as exc:  # torch's word for a hash mismatch
        raise StartError(f"{url}: the downloaded file does not match the hash in its name "
                         f"({one_line(exc)}); it was not kept. Download it again, or copy "
                         f"{path.name} into {path.parent} by hand") from None
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
        raise StartError(f"train.init: imagenet: cannot download {url} ({one_line(exc)}); "
                         f"copy {path.name} into {path.parent} by hand, or set "
                         "train.init: random") from None
    finally:
        socket.setdefaulttimeout(previous)


def file_start(path: Path, source: str, model: str, tags: dict[str, str] | None = None
               ) -> Start:
    """A train stage weights file to start ``model`` from.

    Raises:
        StartError: the file holds another kind of network.
        UserError: not a weights file the train stage writes.
    """
    saved = load_tensors(path)
    arch = saved.get("arch") if isinstance(saved.get("arch"), dict) else None
    if arch is None or "state_dict" not in saved:
        raise StartError(f"train.init {source}: not a model the train stage saved")
    if arch.get("model") != model:
        raise StartError(f"train.init {source}: it is a {arch.get('model')} model, but "
                         f"train.model is {model}; set train.model: {arch.get('model')}")
    info = saved.get("info") or {}
    recorded = {"init_from": source, "init_sha256": sha256(path)}
    if info.get("mlflow_run_id"):  # the lineage walk goes on to the parent model's runs
        recorded |= {"init_run_id": str(info["mlflow_run_id"]),
                     "lineage.init": str(info["mlflow_run_id"])}
    return Start(path, source, tags=recorded | (tags or {}))


def _network(model: nn.Module) -> nn.Module:
    """The network behind the Normalize layer (and the flip averaging, if any)."""
    inner = model.net if isinstance(model, FlipAveraging) else model
    if not (isinstance(inner, nn.Sequential) and isinstance(inner[0], Normalize)):
        raise TypeError("not a network built by build_model")
    return inner[1]


def _source_state(start: Start) -> dict[str, torch.Tensor]:
    """The starting weights, keyed like the network's own (Normalize's left out)."""
    if start.imagenet:
        try:
            state = torch.load(start.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds; each means the same here
            raise StartError(f"{start.path}: not loadable weights ({one_line(exc)}); copy "
                             "the file again") from None
        return dict(state)
    saved = load_tensors(start.path)["state_dict"]
    keys = {key.removeprefix("net."): value for key, value in saved.items()}
    return {key[2:]: value for key, value in keys.items() if key.startswith("1.")}


def apply_start(model: nn.Module, start: Start) -> dict[str, Any]:
    """Load ``start``'s weights into ``model`` (built by ``build_model``).

    Returns what happened: tensors loaded, whether the head was replaced, and the tensors
    left at their initial values (a small-image stem that ImageNet's has no shape for).

    Raises:
        StartError: a tensor of another shape that is neither the head nor the stem.
    """
    network, source = _network(model), _source_state(start)
    head_name = next(name for name, module in network.named_modules()
                     if module is head(network))
    stem = next(name for name, module in network.named_modules()
                if isinstance(module, nn.Conv2d))
    loaded, kept, head_replaced = {}, [], False
    for key, target in network.state_dict().items():
        value = source.get(key)
        if value is None:
            raise StartError(f"train.init {start.source}: it has no tensor {key!r}: another "
                             "architecture (train.model, train.width)")
        if value.shape == target.shape:
            loaded[key] = value
        elif key.startswith(f"{head_name}."):
            head_replaced = True  # another class count: the head starts afresh
        elif key == f"{stem}.weight" and _adaptable(value, target):
            loaded[key] = _adapt_stem(value, target)
        elif key == f"{stem}.weight" and start.imagenet:
            kept.append(key)  # a 3x3 small-image stem: no ImageNet kernel fits it
        else:
            raise StartError(f"train.init {start.source}: tensor {key!r} is "
                             f"{list(value.shape)} there but {list(target.shape)} here; the "
                             "model differs (train.width, data.channels or data.image_size)")
    network.load_state_dict(loaded, strict=False)
    return {"init_tensors_loaded": len(loaded), "init_head_replaced": head_replaced,
            "init_reinitialised": ",".join(kept)}


def _adaptable(value: torch.Tensor, target: torch.Tensor) -> bool:
    return (value.ndim == 4 and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:] and {value.shape[1], target.shape[1]} == {1, 3})


def _adapt_stem(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RGB kernels summed for grey input, or a grey kernel spread over RGB."""
    if target.shape[1] == 1:
        return value.sum(dim=1, keepdim=True)
    return value.repeat(1, 3, 1, 1) / 3


def _keep_statistics(module: nn.Module, args: Any) -> None:
    module.eval()  # a frozen batch norm keeps the running statistics it was trained with


def freeze_backbone(model: nn.Module) -> None:
    """Train only the head: every other parameter is frozen, and so are the batch norms'
    running statistics."""
    top = head(_network(model))
    trainable = {id(p) for p in top.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    for module in _network(model).modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_keep_statistics)
