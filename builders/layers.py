"""Per-layer weight converters between the torch state dict and Keras variables.

Each converter returns a LayerMap: which torch tensors and which Keras variables hold
one layer's parameters, and the two numpy functions that turn one into the other.
The mappings are the measured facts of ../shared/PITFALLS.md, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Arrays = tuple[np.ndarray, ...]
Align = Callable[[np.ndarray, Any], np.ndarray]
"""(torch module's output, the Keras layer) -> that output as the Keras layer gives it."""


def same_layout(output: np.ndarray, _layer: Any) -> np.ndarray:
    return output


@dataclass(frozen=True)
class LayerMap:
    """One layer's parameters: torch names <-> Keras variable paths, both directions, and how
    the torch module's output is brought to the Keras layer's (for localisation)."""

    layer: str
    torch_names: tuple[str, ...]
    keras_paths: tuple[str, ...]
    to_keras: Callable[..., Arrays]
    to_torch: Callable[..., Arrays]
    align: Align = same_layout


def fused_activation(output: np.ndarray, layer: Any) -> np.ndarray:
    """Keras fuses a Dense/Conv layer's activation into the layer; torch applies it after."""
    return np.asarray(layer.activation(output))


def channels_last(output: np.ndarray, layer: Any) -> np.ndarray:
    """A conv's channels-first output (N, C, ...) as channels-last, with the fused activation."""
    return fused_activation(np.moveaxis(output, 1, -1), layer)


def final_state(output: np.ndarray, layer: Any) -> np.ndarray:
    """A torch RNN's output sequence as the Keras layer gives it: the whole sequence where the
    Keras layer returns sequences, else the final state (for a Bidirectional layer, the
    forward half's last step next to the backward half's first)."""
    if not (output.ndim == 3 and len(layer.output.shape) == 2):
        return output
    if hasattr(layer, "backward_layer"):
        half = output.shape[-1] // 2
        return np.concatenate([output[:, -1, :half], output[:, 0, half:]], axis=-1)
    return output[:, -1]


def _params(prefix: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n in names)


def _vars(prefix: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}/{n}" for n in names)


def embedding(torch_prefix: str, keras_layer: str) -> LayerMap:
    """Embedding table: the same (vocab, dim) array on both sides."""
    same = lambda table: (table,)  # noqa: E731
    return LayerMap(torch_prefix, _params(torch_prefix, "weight"),
                    _vars(keras_layer, "embeddings"), same, same)


def dense(torch_prefix: str, keras_layer: str) -> LayerMap:
    """Linear (out, in) <-> Dense kernel (in, out)."""
    return LayerMap(
        torch_prefix, _params(torch_prefix, "weight", "bias"), _vars(keras_layer, "kernel", "bias"),
        to_keras=lambda w, b: (w.T, b),
        to_torch=lambda k, b: (k.T, b),
        align=fused_activation,
    )


def flatten_permutation(channels: int, height: int, width: int) -> np.ndarray:
    """Index array p: Keras (NHWC) flattened feature r is torch (NCHW) feature p[r]."""
    return np.arange(channels * height * width).reshape(channels, height, width) \
        .transpose(1, 2, 0).reshape(-1)


def flatten_dense(torch_prefix: str, keras_layer: str,
                  channels: int, height: int, width: int) -> LayerMap:
    """The first Linear after Flatten: NCHW and NHWC flatten in different orders."""
    perm = flatten_permutation(channels, height, width)
    inverse = np.argsort(perm)
    return LayerMap(
        torch_prefix, _params(torch_prefix, "weight", "bias"), _vars(keras_layer, "kernel", "bias"),
        to_keras=lambda w, b: (w.T[perm], b),
        to_torch=lambda k, b: (k[inverse].T, b),
        align=fused_activation,
    )


def conv2d(torch_prefix: str, keras_layer: str) -> LayerMap:
    """Conv2d weight (O, I, kh, kw) <-> Conv2D kernel (kh, kw, I, O)."""
    return LayerMap(
        torch_prefix, _params(torch_prefix, "weight", "bias"), _vars(keras_layer, "kernel", "bias"),
        to_keras=lambda w, b: (w.transpose(2, 3, 1, 0), b),
        to_torch=lambda k, b: (k.transpose(3, 2, 0, 1), b),
        align=channels_last,
    )


def layernorm(torch_prefix: str, keras_layer: str) -> LayerMap:
    """LayerNorm weight/bias <-> gamma/beta. The epsilon is the builders' job (Keras: 1e-3)."""
    same = lambda g, b: (g, b)  # noqa: E731
    return LayerMap(torch_prefix, _params(torch_prefix, "weight", "bias"),
                    _vars(keras_layer, "gamma", "beta"), same, same)


def _rnn_names(torch_prefix: str, reverse: bool) -> tuple[str, ...]:
    suffix = "_l0_reverse" if reverse else "_l0"
    return _params(torch_prefix, *(f"{n}{suffix}" for n in
                                   ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))


def lstm(torch_prefix: str, keras_cell: str, reverse: bool = False) -> LayerMap:
    """One direction of a one-layer nn.LSTM <-> a Keras LSTM cell (both gate order i,f,g,o).

    Keras has one bias, b_ih + b_hh: the way back can only return the sum (as b_ih, b_hh = 0).
    """
    return LayerMap(
        torch_prefix + ("_reverse" if reverse else ""), _rnn_names(torch_prefix, reverse),
        _vars(keras_cell, "kernel", "recurrent_kernel", "bias"),
        to_keras=lambda wi, wh, bi, bh: (wi.T, wh.T, bi + bh),
        to_torch=lambda k, r, b: (k.T, r.T, b, np.zeros_like(b)),
        align=final_state,
    )


def _swap_first_two_gates(x: np.ndarray) -> np.ndarray:
    """Torch GRU gates r,z,n <-> Keras z,r,h along axis 0 (the swap is its own inverse)."""
    r, z, n = np.split(x, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def gru(torch_prefix: str, keras_cell: str, reverse: bool = False) -> LayerMap:
    """One direction of a one-layer nn.GRU <-> a Keras GRU cell with reset_after=True.

    Keras bias is (2, 3H): row 0 the input bias, row 1 the recurrent bias.
    """
    g = _swap_first_two_gates
    return LayerMap(
        torch_prefix + ("_reverse" if reverse else ""), _rnn_names(torch_prefix, reverse),
        _vars(keras_cell, "kernel", "recurrent_kernel", "bias"),
        to_keras=lambda wi, wh, bi, bh: (g(wi).T, g(wh).T, np.stack([g(bi), g(bh)])),
        to_torch=lambda k, r, b: (g(k.T), g(r.T), g(b[0]), g(b[1])),
        align=final_state,
    )


def attention(torch_prefix: str, keras_layer: str, heads: int) -> LayerMap:
    """nn.MultiheadAttention (packed q,k,v in_proj) <-> keras MultiHeadAttention.

    Keras q/k/v kernels are (D, heads, head_dim), biases (heads, head_dim); the output
    kernel is (heads, head_dim, D). Head h is rows h*head_dim.. of torch's projections.
    """

    def to_keras(in_w, in_b, out_w, out_b):
        d = out_w.shape[0]
        qkv = [(w.T.reshape(d, heads, -1), b.reshape(heads, -1))
               for w, b in zip(np.split(in_w, 3), np.split(in_b, 3), strict=True)]
        return (*qkv[0], *qkv[1], *qkv[2], out_w.T.reshape(heads, -1, d), out_b)

    def to_torch(qk, qb, kk, kb, vk, vb, ok, ob):
        d = ob.shape[0]
        in_w = np.concatenate([k.reshape(d, d).T for k in (qk, kk, vk)])
        in_b = np.concatenate([b.reshape(d) for b in (qb, kb, vb)])
        return in_w, in_b, ok.reshape(d, d).T, ob

    keras_paths = tuple(f"{keras_layer}/{part}/{v}"
                        for part in ("query", "key", "value", "attention_output")
                        for v in ("kernel", "bias"))
    return LayerMap(torch_prefix,
                    _params(torch_prefix, "in_proj_weight", "in_proj_bias",
                            "out_proj.weight", "out_proj.bias"),
                    keras_paths, to_keras, to_torch)


def sinusoidal_table(max_len: int, dim: int) -> np.ndarray:
    """Sinusoidal positions (max_len, dim), computed once in float64 and cast to float32.

    Both twins get this same constant: torch.exp and tf.exp differ by an ulp.
    """
    position = np.arange(max_len, dtype=np.float64)[:, None]
    freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-np.log(10000.0) / dim))
    table = np.zeros((max_len, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(position * freq)
    table[:, 1::2] = np.cos(position * freq)
    return table.astype(np.float32)


def conv1d(torch_prefix: str, keras_layer: str) -> LayerMap:
    """Conv1d weight (O, I, k) <-> Conv1D kernel (k, I, O). Torch is (N, C, L), Keras (N, L, C)."""
    return LayerMap(
        torch_prefix, _params(torch_prefix, "weight", "bias"), _vars(keras_layer, "kernel", "bias"),
        to_keras=lambda w, b: (w.transpose(2, 1, 0), b),
        to_torch=lambda k, b: (k.transpose(2, 1, 0), b),
        align=channels_last,
    )
