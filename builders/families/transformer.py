"""Transformer encoder classifier: Embedding + sinusoidal positions, post-norm encoder layers,
masked mean pool, Dense. Token id 0 is padding: masked in attention and in the pool.

Every row needs at least one non-padding token (an all-padding row has nothing to attend to).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from onnxtwin.builders import layers
from onnxtwin.builders.registry import builtin, family
from onnxtwin.builders.signature import (
    MAX_LAYERS,
    MAX_VOCAB,
    ModelSpec,
    Signature,
    require,
    require_range,
    require_widths,
    token_classifier,
)

ACTIVATIONS = ("relu", "gelu")


@family
@dataclass(frozen=True)
class TransformerSpec(ModelSpec):
    """`activation` gelu is the exact (erf) GELU on both sides."""

    family: ClassVar[str] = "transformer"
    name: str = "transformer"
    vocab: int = 10000
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff: int = 128
    activation: str = "relu"
    norm_eps: float = 1e-5
    max_len: int = 2048
    classes: int = 10

    def check(self) -> None:
        require_widths(self, "heads", "ff", "max_len", "classes", "d_model")
        require_range(self, "layers", 1, MAX_LAYERS)
        require_range(self, "vocab", 2, MAX_VOCAB)
        require(self.d_model % 2 == 0, self, "an even d_model (sinusoidal positions)",
                self.d_model)
        require(self.d_model % self.heads == 0, self,
                f"d_model divisible by heads={self.heads}", self.d_model)
        require(self.activation in ACTIVATIONS, self, f"activation in {ACTIVATIONS}",
                self.activation)
        require(0 < self.norm_eps < 1, self, "0 < norm_eps < 1", self.norm_eps)

    def parameter_count(self) -> int:
        """Counts the positions table (max_len x d_model) too: it is built with the model."""
        d, ff = self.d_model, self.ff
        layer = 4 * d * d + 2 * d * ff + 9 * d + ff  # attention, two norms, two linears
        return ((self.vocab + self.max_len) * d + self.layers * layer
                + d * self.classes + self.classes)

    @property
    def signature(self) -> Signature:
        return token_classifier(self.vocab, self.classes, max_seq=self.max_len)

    def positions(self):
        return layers.sinusoidal_table(self.max_len, self.d_model)

    def torch_model(self) -> nn.Module:
        return TorchTransformer(self)

    def keras_model(self):
        return keras_transformer(self)

    def layer_maps(self) -> list[layers.LayerMap]:
        maps = [layers.embedding("embedding", "embedding")]
        for i in range(self.layers):
            t, k = f"encoder.{i}", f"encoder{i}"
            maps += [layers.attention(f"{t}.self_attn", f"{k}_attn", self.heads),
                     layers.layernorm(f"{t}.norm1", f"{k}_norm1"),
                     layers.dense(f"{t}.linear1", f"{k}_linear1"),
                     layers.dense(f"{t}.linear2", f"{k}_linear2"),
                     layers.layernorm(f"{t}.norm2", f"{k}_norm2")]
        return [*maps, layers.dense("fc", "fc")]


class BatchFirstAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose self-attention is computed batch-first.

    torch's own works seq-first and transposes around every projection: its ONNX export
    holds 16 Transposes for two layers, a third of onnxruntime's time at batch 64. Here
    q, k, v come from one projection reshaped to [batch, seq, 3, heads, head_dim]. Same
    parameters (and names), same math; in inference mode nn.TransformerEncoderLayer
    still takes torch's fused fast path, which reads the parameters and not this forward.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if key is not query or value is not query or attn_mask is not None or need_weights:
            raise ValueError("BatchFirstAttention: expected self-attention with at most a "
                             "key padding mask, got other arguments")
        batch, seq, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, seq, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # key_padding_mask comes from nn.TransformerEncoderLayer as an additive float mask
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, seq, width)), None


class TorchTransformer(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        self.embedding = nn.Embedding(spec.vocab, spec.d_model)
        self.register_buffer("positions", torch.from_numpy(spec.positions()), persistent=False)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(spec.d_model, spec.heads, spec.ff, dropout=0.0,
                                       activation=spec.activation, layer_norm_eps=spec.norm_eps,
                                       batch_first=True)
            for _ in range(spec.layers))
        for layer in self.encoder:  # torch's initialised weights, moved to the batch-first module
            attention = nn.utils.skip_init(BatchFirstAttention, spec.d_model, spec.heads,
                                           batch_first=True)
            attention.load_state_dict(layer.self_attn.state_dict())
            layer.self_attn = attention
        self.fc = nn.Linear(spec.d_model, spec.classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        padding = tokens == 0  # True = ignore
        x = self.embedding(tokens) + self.positions[: tokens.shape[1]]
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(1).to(x.dtype)  # [batch, 1, seq]
        return self.fc((keep @ x).squeeze(1) / keep.sum(2).clamp(min=1))


@functools.cache
def _add_positions_layer():
    """The Keras layer class that adds positions (made on first use: Keras imports TF)."""
    from onnxtwin.builders.keras_support import keras

    class AddPositions(keras.layers.Layer):
        """Add the first `seq` rows of a fixed positional table (the torch twin's constant)."""

        def __init__(self, table, **kwargs):
            super().__init__(**kwargs)
            self.table = table  # numpy: a constant in every traced graph, not a captured input

        def call(self, x):
            return x + keras.ops.convert_to_tensor(self.table)[: keras.ops.shape(x)[1]]

    return AddPositions


def keras_transformer(spec: TransformerSpec):
    from onnxtwin.builders.keras_support import keras

    AddPositions = _add_positions_layer()

    ops, kl = keras.ops, keras.layers
    tokens = keras.Input((None,), dtype="int64", name="tokens")
    keep = ops.not_equal(tokens, 0)  # True = attend
    attend = ops.expand_dims(keep, 1)  # [batch, 1, seq]: the same keys for every query
    x = kl.Embedding(spec.vocab, spec.d_model, name="embedding")(tokens)
    x = AddPositions(spec.positions(), name="positions")(x)
    for i in range(spec.layers):
        mha = kl.MultiHeadAttention(spec.heads, spec.d_model // spec.heads, name=f"encoder{i}_attn")
        x = kl.LayerNormalization(epsilon=spec.norm_eps, name=f"encoder{i}_norm1")(
            x + mha(x, x, attention_mask=attend))
        ff = kl.Dense(spec.ff, activation=spec.activation, name=f"encoder{i}_linear1")(x)
        ff = kl.Dense(spec.d_model, name=f"encoder{i}_linear2")(ff)
        x = kl.LayerNormalization(epsilon=spec.norm_eps, name=f"encoder{i}_norm2")(x + ff)
    weight = ops.cast(attend, "float32")  # [batch, 1, seq]
    pooled = ops.squeeze(ops.matmul(weight, x), 1) / ops.maximum(ops.sum(weight, axis=2), 1.0)
    logits = kl.Dense(spec.classes, name="fc")(pooled)
    return keras.Model(tokens, logits, name=spec.name)


builtin(TransformerSpec(name="transformer", activation="relu"),
        TransformerSpec(name="transformer-gelu", activation="gelu"))
