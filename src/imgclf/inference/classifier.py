"""A trained network with the preprocessing it was trained with: images in, class names and
probabilities out.

Every logged model carries a :class:`Preprocessing`, so an image file is prepared exactly as
the preprocess stage prepared the training images (same decoder, same resize, same channel
conversion), whatever ``params.yaml`` says today.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from imgclf.data.images import RESIZE_MODES, decode, resize, to_array

INPUT_RANGE = (0.0, 1.0)  # what the networks take: pixels / 255
COLUMN = "image"  # the request column that holds the images
# set by ``make serve`` to the registered version it serves, which every answer then names
SERVED_MODEL_ENV = "IMGCLF_SERVED_MODEL"


class InvalidInput(ValueError):
    """Input a model cannot answer; the message says what is wrong and how to send it."""


@dataclass(frozen=True)
class Preprocessing:
    """How images become a network's input."""

    classes: list[str]
    image_shape: list[int]  # channels, height, width
    resize: str = "squash"
    mean: list[float] = field(default_factory=list)  # applied inside the network
    std: list[float] = field(default_factory=list)
    input_range: tuple[float, float] = INPUT_RANGE

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(self.image_shape) != 3 or self.resize not in RESIZE_MODES:
            raise ValueError(f"not a model's preprocessing: {self}")

    def to_config(self) -> dict[str, Any]:
        return {**asdict(self), "input_range": list(self.input_range)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing recorded in a model's configuration.

        Raises:
            ValueError: a key is missing or a value is not what :meth:`to_config` writes.
        """
        try:
            return cls(list(config["classes"]), [int(v) for v in config["image_shape"]],
                       str(config["resize"]), [float(v) for v in config.get("mean", [])],
                       [float(v) for v in config.get("std", [])],
                       tuple(float(v) for v in config.get("input_range", INPUT_RANGE)))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the model carries no usable preprocessing ({exc})") from None

    def pixels(self, source: Path | bytes | IO[bytes]) -> np.ndarray:
        """An image file's pixels as the network's training images were made (uint8,
        channels x height x width).

        Raises:
            BadImage: not a readable image, or over Pillow's decompression-bomb limit.
        """
        channels, height, width = self.image_shape
        opened = io.BytesIO(source) if isinstance(source, bytes) else source
        decoded = decode(opened, at_least=max(height, width))
        return to_array(resize(decoded.image, (height, width), self.resize), channels)


@dataclass
class Classifier:
    """A network (any callable from an image batch to logits) and its preprocessing."""

    network: Callable[[torch.Tensor], torch.Tensor]
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def classes(self) -> list[str]:
        return self.preprocessing.classes

    def check(self, images: torch.Tensor) -> None:
        """Refuse a batch of the wrong shape, empty, or with values outside the input range.

        Raises:
            InvalidInput: naming the problem and the form the model expects.
        """
        expected = " x ".join(str(v) for v in self.preprocessing.image_shape)
        if images.ndim != 4 or list(images.shape[1:]) != self.preprocessing.image_shape:
            raise InvalidInput(f"images must be shaped N x {expected} (channels, height, "
                               f"width); got {' x '.join(str(v) for v in images.shape)}")
        if len(images) == 0:
            raise InvalidInput("the batch is empty: send at least one image")
        low, high = self.preprocessing.input_range
        if not torch.isfinite(images).all():
            raise InvalidInput("pixel values must be finite numbers; got NaN or infinity")
        smallest, largest = float(images.min()), float(images.max())
        if smallest < low or largest > high:
            hint = " (these look like 0-255 pixels: divide them by 255)" if largest <= 255 else ""
            raise InvalidInput(f"pixel values must be in [{low:g}, {high:g}]; got values "
                               f"from {smallest:g} to {largest:g}{hint}")

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes) of float images in the input range.

        Raises:
            InvalidInput: see :meth:`check`.
        """
        self.check(images)
        with torch.no_grad():
            logits = self.network(images.float().to(self.device))
        return torch.softmax(logits.float(), dim=1).cpu()

    def probabilities_of_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """Class probabilities of uint8 images as :meth:`Preprocessing.pixels` makes them."""
        return self.probabilities(torch.from_numpy(pixels.astype(np.float32) / 255))

    def answers(self, probabilities: torch.Tensor) -> list[dict[str, Any]]:
        """Per image: the most likely ``class``, its ``probability``, and every class's
        ``probabilities`` by name."""
        best = probabilities.argmax(dim=1).tolist()
        return [{"class": self.classes[top], "probability": float(row[top]),
                 "probabilities": dict(zip(self.classes, row.tolist(), strict=True))}
                for top, row in zip(best, probabilities, strict=True)]
