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
Align = Callable[[np.ndarray, Any], "np.ndarray | None"]
"""(torch module's output, the Keras layer) -> that output as the Keras layer gives it, or
None where the torch module does not show it (an inner layer of a multi-layer RNN)."""


def same_layout(output: np.ndarray, _layer: Any) -> np.ndarray:
    return output


def owner(parameter: str) -> str:
    """The module that holds a parameter: 'rnns.0.weight_ih_l0_reverse' -> 'rnns.0'."""
    return parameter.rsplit(".", 1)[0] if "." in parameter else ""


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
    torch_module: str = ""
    """The torch module whose output `align` takes (default: the owner of the first name)."""
    keras_layer: str = ""
    """The Keras layer's path or name (default: the first part of the first variable path)."""

    def __post_init__(self) -> None:
        if not self.torch_module:
            object.__setattr__(self, "torch_module", owner(self.torch_names[0]))
        if not self.keras_layer:
            object.__setattr__(self, "keras_layer", self.keras_paths[0].split("/")[0])


def fused_activation(output: np.ndarray, layer: Any) -> np.ndarray:
    """Keras fuses a Dense/Conv layer's activation into the layer; torch applies it after."""
    return np.asarray(layer.activation(output))


def channels_last(output: np.ndarray, layer: Any) -> np.ndarray:
    """A conv's channels-first output (N, C, ...) as channels-last, with the fused activation."""
    return fused_activation(np.moveaxis(output, 1, -1), layer)


def channels_moved(output: np.ndarray, _layer: Any) -> np.ndarray:
    """A batch norm's output (N, C, ...) as channels-last; (N, C) stays."""
    return np.moveaxis(output, 1, -1) if output.ndim > 2 else output


def final_state(output: np.ndarray, layer: Any) -> np.ndarray:
    """A torch RNN's output sequence as the Keras layer gives it: the whole sequence where the
    Keras layer returns sequences, else the final state (for a Bidirectional layer, the
    forward half's last step next to the backward half's first)."""
    if output.ndim != 3 or layer.return_sequences:
        return output
    if hasattr(layer, "backward_layer"):
        half = output.shape[-1] // 2
        return np.concatenate([output[:, -1, :half], output[:, 0, half:]], axis=-1)
    return output[:, -1]


def sequence_first(align: Align) -> Align:
    """`align` for a torch module whose output is (seq, batch, ...): batch_first=False."""
    return lambda output, layer: align(np.swapaxes(output, 0, 1), layer)


def hidden(_output: np.ndarray, _layer: Any) -> None:
    """An inner layer of a multi-layer torch RNN: its output stays inside the module."""
    return None


def _params(prefix: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" if prefix else n for n in names)


def _vars(prefix: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}/{n}" for n in names)


def _bias(bias: bool, *names: str) -> tuple[str, ...]:
    return names if bias else ()


def _same(*arrays: np.ndarray) -> Arrays:
    return arrays


def embedding(torch_prefix: str, keras_layer: str) -> LayerMap:
    """Embedding table: the same (vocab, dim) array on both sides."""
    return LayerMap(torch_prefix, _params(torch_prefix, "weight"),
                    _vars(keras_layer, "embeddings"), _same, _same)


def _dense(torch_prefix: str, keras_layer: str, bias: bool,
           rows: np.ndarray | None) -> LayerMap:
    """Linear (out, in) <-> Dense kernel (in, out); Keras row r is torch column rows[r]."""
    rows = slice(None) if rows is None else rows
    columns = slice(None) if isinstance(rows, slice) else np.argsort(rows)
    return LayerMap(
        torch_prefix, _params(torch_prefix, "weight", *_bias(bias, "bias")),
        _vars(keras_layer, "kernel", *_bias(bias, "bias")),
        to_keras=lambda w, *b: (w.T[rows], *b),
        to_torch=lambda k, *b: (k[columns].T, *b),
        align=fused_activation,
    )


def dense(torch_prefix: str, keras_layer: str, bias: bool = True) -> LayerMap:
    """Linear (out, in) <-> Dense kernel (in, out)."""
    return _dense(torch_prefix, keras_layer, bias, None)


def flatten_permutation(channels: int, *spatial: int) -> np.ndarray:
    """Index array p: channels-last (N, d1.., C) flattened feature r is channels-first
    (N, C, d1..) feature p[r]."""
    return np.arange(channels * int(np.prod(spatial, dtype=np.int64))) \
        .reshape(channels, *spatial).transpose(*range(1, len(spatial) + 1), 0).reshape(-1)


def flatten_dense(torch_prefix: str, keras_layer: str, channels: int, *spatial: int,
                  bias: bool = True) -> LayerMap:
    """A Linear after a Flatten: channels-first and channels-last flatten in different orders."""
    return _dense(torch_prefix, keras_layer, bias, flatten_permutation(channels, *spatial))


def conv(torch_prefix: str, keras_layer: str, rank: int, bias: bool = True) -> LayerMap:
    """ConvNd weight (O, I, k1..) <-> ConvND kernel (k1.., I, O). Torch is channels-first,
    Keras channels-last."""
    to_kernel = (*range(2, rank + 2), 1, 0)
    to_weight = (rank + 1, rank, *range(rank))
    return LayerMap(
        torch_prefix, _params(torch_prefix, "weight", *_bias(bias, "bias")),
        _vars(keras_layer, "kernel", *_bias(bias, "bias")),
        to_keras=lambda w, *b: (w.transpose(to_kernel), *b),
        to_torch=lambda k, *b: (k.transpose(to_weight), *b),
        align=channels_last,
    )


def conv1d(torch_prefix: str, keras_layer: str, bias: bool = True) -> LayerMap:
    """Conv1d weight (O, I, k) <-> Conv1D kernel (k, I, O). Torch is (N, C, L), Keras (N, L, C)."""
    return conv(torch_prefix, keras_layer, 1, bias)


def conv2d(torch_prefix: str, keras_layer: str, bias: bool = True) -> LayerMap:
    """Conv2d weight (O, I, kh, kw) <-> Conv2D kernel (kh, kw, I, O)."""
    return conv(torch_prefix, keras_layer, 2, bias)


def layernorm(torch_prefix: str, keras_layer: str, scale: bool = True,
              center: bool = True) -> LayerMap:
    """LayerNorm weight/bias <-> gamma/beta. The epsilon is the builders' job (Keras: 1e-3)."""
    return LayerMap(torch_prefix,
                    _params(torch_prefix, *_bias(scale, "weight"), *_bias(center, "bias")),
                    _vars(keras_layer, *_bias(scale, "gamma"), *_bias(center, "beta")),
                    _same, _same)


def batchnorm(torch_prefix: str, keras_layer: str, affine: bool = True) -> LayerMap:
    """BatchNorm weight, bias, running_mean/var <-> gamma, beta, moving_mean/variance.

    Torch's num_batches_tracked counts training steps only: Keras has none, the way back
    gives 0.
    """
    return LayerMap(
        torch_prefix,
        _params(torch_prefix, *_bias(affine, "weight", "bias"), "running_mean", "running_var",
                "num_batches_tracked"),
        _vars(keras_layer, *_bias(affine, "gamma", "beta"), "moving_mean", "moving_variance"),
        to_keras=lambda *a: a[:-1],
        to_torch=lambda *a: (*a, np.array(0, np.int64)),
        align=channels_moved,
    )


def _rnn_names(torch_prefix: str, reverse: bool, layer: int, bias: bool) -> tuple[str, ...]:
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    return _params(torch_prefix, *(f"{n}{suffix}" for n in
                                   ("weight_ih", "weight_hh", *_bias(bias, "bias_ih", "bias_hh"))))


def _rnn_label(torch_prefix: str, reverse: bool, layer: int) -> str:
    return torch_prefix + (f"_l{layer}" if layer else "") + ("_reverse" if reverse else "")


def _cell_vars(keras_cell: str, bias: bool) -> tuple[str, ...]:
    return _vars(keras_cell, "kernel", "recurrent_kernel", *_bias(bias, "bias"))


def lstm(torch_prefix: str, keras_cell: str, reverse: bool = False, layer: int = 0,
         bias: bool = True) -> LayerMap:
    """One direction of one layer of an nn.LSTM <-> a Keras LSTM cell (gate order i,f,g,o).

    Keras has one bias, b_ih + b_hh: the way back can only return the sum (as b_ih, b_hh = 0).
    """
    def to_keras(wi, wh, *b):
        return (wi.T, wh.T, b[0] + b[1]) if bias else (wi.T, wh.T)

    def to_torch(k, r, *b):
        return (k.T, r.T, b[0], np.zeros_like(b[0])) if bias else (k.T, r.T)

    return LayerMap(_rnn_label(torch_prefix, reverse, layer),
                    _rnn_names(torch_prefix, reverse, layer, bias),
                    _cell_vars(keras_cell, bias), to_keras, to_torch, align=final_state)


def _swap_first_two_gates(x: np.ndarray) -> np.ndarray:
    """Torch GRU gates r,z,n <-> Keras z,r,h along axis 0 (the swap is its own inverse)."""
    r, z, n = np.split(x, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def gru(torch_prefix: str, keras_cell: str, reverse: bool = False, layer: int = 0,
        bias: bool = True) -> LayerMap:
    """One direction of one layer of an nn.GRU <-> a Keras GRU cell with reset_after=True.

    Keras bias is (2, 3H): row 0 the input bias, row 1 the recurrent bias.
    """
    g = _swap_first_two_gates

    def to_keras(wi, wh, *b):
        return (g(wi).T, g(wh).T, *([np.stack([g(b[0]), g(b[1])])] if bias else []))

    def to_torch(k, r, *b):
        return (g(k.T), g(r.T), *((g(b[0][0]), g(b[0][1])) if bias else ()))

    return LayerMap(_rnn_label(torch_prefix, reverse, layer),
                    _rnn_names(torch_prefix, reverse, layer, bias),
                    _cell_vars(keras_cell, bias), to_keras, to_torch, align=final_state)


def attention(torch_prefix: str, keras_layer: str, heads: int, bias: bool = True) -> LayerMap:
    """nn.MultiheadAttention (packed q,k,v in_proj) <-> keras MultiHeadAttention.

    Keras q/k/v kernels are (D, heads, head_dim), biases (heads, head_dim); the output
    kernel is (heads, head_dim, D). Head h is rows h*head_dim.. of torch's projections.
    """

    def to_keras(*arrays):
        in_w, out_w = arrays[0], arrays[2 if bias else 1]
        d = out_w.shape[0]
        in_b = np.split(arrays[1], 3) if bias else [None] * 3
        parts = []
        for w, b in zip(np.split(in_w, 3), in_b, strict=True):
            parts += [w.T.reshape(d, heads, -1), *([b.reshape(heads, -1)] if bias else [])]
        return (*parts, out_w.T.reshape(heads, -1, d), *arrays[3:])

    def to_torch(*arrays):
        kernels, biases = (arrays[0::2], arrays[1::2]) if bias else (arrays, ())
        d = kernels[3].shape[-1]
        in_w = np.concatenate([k.reshape(d, d).T for k in kernels[:3]])
        out_w = kernels[3].reshape(d, d).T
        if not bias:
            return in_w, out_w
        return in_w, np.concatenate([b.reshape(d) for b in biases[:3]]), out_w, biases[3]

    keras_paths = tuple(f"{keras_layer}/{part}/{v}"
                        for part in ("query", "key", "value", "attention_output")
                        for v in ("kernel", *_bias(bias, "bias")))
    return LayerMap(torch_prefix,
                    _params(torch_prefix, "in_proj_weight", *_bias(bias, "in_proj_bias"),
                            "out_proj.weight", *_bias(bias, "out_proj.bias")),
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
