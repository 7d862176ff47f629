"""1-D convolutional text classifier: Embedding, Conv1d-ReLU ("same" padding), global max
pool over the sequence, Dropout, Dense.

The torch twin convolves channels-first (N, C, L), the Keras twin channels-last (N, L, C):
the conv1d layer map transposes the kernel, and the pool takes the max over the sequence
axis of each (one ReduceMax in both exported files, the sequence left dynamic). Padding
id 0 is an ordinary token here (as in the RNN family): its embedding enters the max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from onnxtwin.builders import layers
from onnxtwin.builders.registry import builtin, family
from onnxtwin.builders.signature import (
    MAX_VOCAB,
    ModelSpec,
    Signature,
    require,
    require_range,
    require_widths,
    token_classifier,
)


@family
@dataclass(frozen=True)
class TextCnnSpec(ModelSpec):
    """One conv of `channels` filters of width `kernel_size` (odd: "same" padding is then
    (k - 1) / 2 on each side in both frameworks); `dropout` acts in training only."""

    family: ClassVar[str] = "textcnn"
    name: str = "textcnn"
    vocab: int = 10000
    embed_dim: int = 64
    channels: int = 128
    kernel_size: int = 5
    dropout: float = 0.5
    classes: int = 10

    def check(self) -> None:
        require_range(self, "vocab", 2, MAX_VOCAB)
        require_widths(self, "embed_dim", "channels", "classes")
        # torch pads an even kernel's "same" by copying the input (and warns); odd is symmetric
        require(self.kernel_size % 2 == 1, self, "an odd kernel_size >= 1", self.kernel_size)
        require_widths(self, "kernel_size")
        require(0.0 <= self.dropout < 1.0, self, "0 <= dropout < 1", self.dropout)

    def parameter_count(self) -> int:
        embed, channels = self.vocab * self.embed_dim, self.channels
        conv = self.embed_dim * channels * self.kernel_size + channels
        return embed + conv + channels * self.classes + self.classes

    @property
    def signature(self) -> Signature:
        return token_classifier(self.vocab, self.classes)

    def torch_model(self) -> nn.Module:
        return TorchTextCnn(self)

    def keras_model(self):
        return keras_textcnn(self)

    def layer_maps(self) -> list[layers.LayerMap]:
        return [layers.embedding("embedding", "embedding"), layers.conv1d("conv", "conv"),
                layers.dense("fc", "fc")]


class TorchTextCnn(nn.Module):
    def __init__(self, spec: TextCnnSpec):
        super().__init__()
        self.embedding = nn.Embedding(spec.vocab, spec.embed_dim)
        self.conv = nn.Conv1d(spec.embed_dim, spec.channels, spec.kernel_size, padding="same")
        self.dropout = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(spec.channels, spec.classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens).transpose(1, 2)  # [batch, embed, seq]
        x = F.relu(self.conv(x)).amax(dim=2)  # global max over the sequence
        return self.fc(self.dropout(x))


def keras_textcnn(spec: TextCnnSpec):
    from onnxtwin.builders.keras_support import keras

    kl = keras.layers
    tokens = keras.Input((None,), dtype="int64", name="tokens")
    x = kl.Embedding(spec.vocab, spec.embed_dim, name="embedding")(tokens)
    x = kl.Conv1D(spec.channels, spec.kernel_size, padding="same", activation="relu",
                  name="conv")(x)
    x = kl.GlobalMaxPooling1D(name="pool")(x)
    x = kl.Dropout(spec.dropout, name="dropout")(x)
    logits = kl.Dense(spec.classes, name="fc")(x)
    return keras.Model(tokens, logits, name=spec.name)


builtin(TextCnnSpec(name="textcnn"))
