"""CNN image classifier: Conv-ReLU(-MaxPool) x N, Flatten, Dense-ReLU, Dense.

Images are NCHW at the boundary of both twins; the Keras twin permutes to NHWC inside.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from onnxtwin.builders import layers
from onnxtwin.builders.registry import builtin, family
from onnxtwin.builders.signature import (
    ModelSpec,
    Signature,
    TensorSpec,
    require,
    require_widths,
)


@family
@dataclass(frozen=True)
class CnnSpec(ModelSpec):
    """Conv layers with `channels`, a max-pool 2 after every conv but the last."""

    family: ClassVar[str] = "cnn"
    name: str = "cnn"
    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (32, 64, 64)
    kernel_size: int = 3
    dense: int = 64
    classes: int = 10

    MAX_ACTIVATIONS: ClassVar[int] = 2**25
    """Most values one image's input or conv output may hold (128 MiB of float32): the
    gate runs 7 images at once, and image_size is not bounded by the parameters alone."""

    def check(self) -> None:
        require_widths(self, "in_channels", "image_size", "channels", "kernel_size", "dense",
                       "classes")
        require(self.feature_size >= 1, self,
                f"an image_size the {len(self.channels)} convs of kernel {self.kernel_size} "
                "and the pools leave at least 1 pixel of", self.image_size)
        outputs = [(self.in_channels, self.image_size),
                   *zip(self.channels, self._sides(), strict=True)]
        largest = max(c * side ** 2 for c, side in outputs)
        require(largest <= self.MAX_ACTIVATIONS, self,
                f"at most {self.MAX_ACTIVATIONS} values per image in the input and in each "
                f"conv output (image_size {self.image_size}, channels {list(self.channels)})",
                largest)

    def parameter_count(self) -> int:
        sizes = (self.in_channels, *self.channels)
        convs = sum(i * o * self.kernel_size ** 2 + o for i, o in itertools.pairwise(sizes))
        fc1 = self.channels[-1] * self.feature_size ** 2 * self.dense + self.dense
        return convs + fc1 + self.dense * self.classes + self.classes

    def _sides(self) -> list[int]:
        """Side of each conv's output, up to the first that is empty (< 1)."""
        sides, size = [], self.image_size
        for i in range(len(self.channels)):
            size -= self.kernel_size - 1
            sides.append(size)
            if size < 1:
                break
            if i < len(self.channels) - 1:
                size //= 2
        return sides

    @property
    def feature_size(self) -> int:
        """Side of the last conv's feature map (0 when the image is too small)."""
        sides = self._sides()
        return sides[-1] if len(sides) == len(self.channels) and sides[-1] >= 1 else 0

    @property
    def signature(self) -> Signature:
        side = self.image_size
        return Signature(
            inputs=(TensorSpec("image", "float32", ("batch", self.in_channels, side, side)),),
            outputs=(TensorSpec("logits", "float32", ("batch", self.classes)),))

    def torch_model(self) -> nn.Module:
        return TorchCnn(self)

    def keras_model(self):
        return keras_cnn(self)

    def layer_maps(self) -> list[layers.LayerMap]:
        last, side = self.channels[-1], self.feature_size
        return [*(layers.conv2d(f"convs.{i}", f"conv{i}") for i in range(len(self.channels))),
                layers.flatten_dense("fc1", "fc1", last, side, side),
                layers.dense("fc2", "fc2")]


class TorchCnn(nn.Module):
    def __init__(self, spec: CnnSpec):
        super().__init__()
        sizes = (spec.in_channels, *spec.channels)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, spec.kernel_size)
                                   for i, o in itertools.pairwise(sizes))
        self.fc1 = nn.Linear(spec.channels[-1] * spec.feature_size ** 2, spec.dense)
        self.fc2 = nn.Linear(spec.dense, spec.classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < len(self.convs) - 1:
                x = F.max_pool2d(x, 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def keras_cnn(spec: CnnSpec):
    from onnxtwin.builders.keras_support import keras

    side = spec.image_size
    image = keras.Input((spec.in_channels, side, side), name="image")
    x = keras.layers.Permute((2, 3, 1), name="to_nhwc")(image)
    for i, channels in enumerate(spec.channels):
        x = keras.layers.Conv2D(channels, spec.kernel_size, activation="relu", name=f"conv{i}")(x)
        if i < len(spec.channels) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(spec.dense, activation="relu", name="fc1")(x)
    logits = keras.layers.Dense(spec.classes, name="fc2")(x)
    return keras.Model(image, logits, name=spec.name)


builtin(CnnSpec(name="cnn"))
