"""One matched pair of layers, checked and converted: a torch module and a Keras layer that
builders.matching paired by call order become LayerMaps at their real names, or one line
naming both and what differs (kind, widths, kernel, the padding each really applies,
epsilon, bias, RNN options). A Linear fed by a flattened channels-last Keras tensor gets
its columns permuted, found from the traced shapes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onnxtwin.builders import layers
from onnxtwin.builders.layers import LayerMap
from onnxtwin.runtime.errors import OnnxtwinError

Shape = tuple[int, ...]


@dataclass
class Call:
    """The first call of one torch module or Keras layer (or a model input, `obj` None): the
    shapes of its first tensor argument and first output, and its start and end on one
    clock shared by every call of the run."""

    name: str
    obj: Any
    start: int
    end: int = -1
    input: Shape | None = None
    output: Shape | None = None
    weighted: bool = False
    """It holds parameters (itself or inside): a flattened tensor is not looked for past it."""


@dataclass(frozen=True)
class Unit:
    """One side's parameterised layer as paired: its call, kind and label; for a torch RNN,
    which of its num_layers layers."""

    call: Call
    kind: str
    label: str
    key: str
    """The torch module path, or the Keras layer's path (LayerMap.keras_layer)."""
    rnn_layer: int = 0

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def obj(self) -> Any:
        return self.call.obj

    def shown(self, detail: str = "") -> str:
        return f"{self.name!r} ({self.label}{', ' + detail if detail else ''})"


@dataclass(frozen=True)
class Pair:
    """The index-th torch and Keras units, with both runs' calls (for the flatten search)."""

    index: int
    torch: Unit
    keras: Unit
    torch_calls: list[Call] = field(repr=False)
    keras_calls: list[Call] = field(repr=False)

    def require(self, ok: bool, what: str, torch_detail: str = "", keras_detail: str = ""):
        """One line naming both layers and what differs, unless `ok`."""
        if not ok:
            raise OnnxtwinError(f"layer {self.index}: torch {self.torch.shown(torch_detail)} "
                                f"and keras {self.keras.shown(keras_detail)}: expected {what}")

    def mapped(self, layer_map: LayerMap, keras_paths: tuple[str, ...],
               align: layers.Align) -> LayerMap:
        """`layer_map` at this pair's real names: its module path, Keras paths and layer."""
        expected = [p.rsplit("/", 1)[-1] for p in layer_map.keras_paths]
        self.require(len(keras_paths) == len(expected), f"Keras variables {expected}", "",
                     f"variables {[p.rsplit('/', 1)[-1] for p in keras_paths]}")
        return dataclasses.replace(layer_map, keras_paths=keras_paths, align=align,
                                   torch_module=self.torch.key, keras_layer=self.keras.key)


# -- the pairs -------------------------------------------------------------------------------

def _variables(layer, *names: str) -> tuple[str, ...]:
    """The paths of `layer`'s variables called `names`, in that order (absent ones skipped)."""
    by_name = {v.name: v.path for v in layer.weights}
    return tuple(by_name[n] for n in names if n in by_name)


def _bias(present: bool) -> str:
    return "bias" if present else "no bias"


def _require_bias(p: Pair, torch_bias: bool, keras_bias: bool) -> None:
    p.require(torch_bias == keras_bias, "a bias on both or neither", _bias(torch_bias),
              _bias(keras_bias))


def _dense(p: Pair) -> list[LayerMap]:
    m, layer = p.torch.obj, p.keras.obj
    k_in = int(layer.kernel.shape[0])
    p.require((m.in_features, m.out_features) == (k_in, layer.units), "equal widths",
              f"{m.in_features} -> {m.out_features}", f"{k_in} -> {layer.units}")
    _require_bias(p, m.bias is not None, layer.use_bias)
    flattened = _flattened_channels_last(p)
    converted = layers.dense(p.torch.key, p.keras.key, layer.use_bias) if flattened is None \
        else layers.flatten_dense(p.torch.key, p.keras.key, *flattened, bias=layer.use_bias)
    return [p.mapped(converted, _variables(layer, "kernel", "bias"), layers.fused_activation)]


def _flattened(calls: list[Call], before: int, width: int) -> Shape | None:
    """The per-sample shape flattened into the `width` features a dense layer starting at
    `before` takes: the latest output of that size (or the input of the latest layer that
    flattened it), not looking past a layer with parameters. None if not found."""
    for c in sorted((c for c in calls if 0 <= c.end < before), key=lambda c: -c.end):
        if c.output is None:
            continue
        out = c.output[1:]
        if len(out) >= 2:
            return out if math.prod(out) == width else None
        if out == (width,) and c.input is not None and len(c.input) >= 3 \
                and math.prod(c.input[1:]) == width:
            return c.input[1:]
        if c.weighted:
            return None
    return None


def _flattened_channels_last(p: Pair) -> tuple[int, ...] | None:
    """(C, d1..dk) when the Keras Dense takes a flattened channels-last (d1..dk, C) tensor
    that torch flattens channels-first; None when both flatten the same order (or nothing)."""
    k_in = p.keras.call.input
    if k_in is None or len(k_in) != 2:
        return None
    keras_shape = _flattened(p.keras_calls, p.keras.call.start, k_in[1])
    torch_shape = _flattened(p.torch_calls, p.torch.call.start, k_in[1])
    if keras_shape is None or keras_shape == torch_shape:
        return None
    channels_first = (keras_shape[-1], *keras_shape[:-1])
    p.require(torch_shape in (None, channels_first),
              "the same flattened features (channels-first torch, channels-last keras)",
              f"flattens {torch_shape}", f"flattens {keras_shape}")
    return channels_first


def _torch_padding(m, size: Shape) -> tuple[int, ...]:
    """Torch's padding before each spatial axis ('same': total // 2, as TF)."""
    if m.padding == "valid":
        return (0,) * len(size)
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size, strict=True))
    return tuple(m.padding)


def _keras_padding(layer, size: Shape) -> tuple[int, ...]:
    """Keras' padding before each spatial axis at input `size` (TF 'same': total // 2)."""
    before = []
    for n, k, s, d in zip(size, layer.kernel_size, layer.strides, layer.dilation_rate,
                          strict=True):
        if layer.padding == "same":
            before.append(max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0) // 2)
        else:
            before.append(d * (k - 1) if layer.padding == "causal" else 0)
    return tuple(before)


def _conv(p: Pair) -> list[LayerMap]:
    m, layer = p.torch.obj, p.keras.obj
    rank = len(m.kernel_size)
    p.require(layer.data_format == "channels_last", "Keras data_format 'channels_last'", "",
              f"data_format {layer.data_format!r}")
    p.require(m.padding_mode == "zeros", "padding_mode 'zeros'",
              f"padding_mode {m.padding_mode!r}")
    kernel = tuple(int(d) for d in layer.kernel.shape)
    t_shape = (m.in_channels, m.out_channels, tuple(m.kernel_size))
    k_shape = (kernel[rank] * layer.groups, kernel[-1], kernel[:rank])
    p.require(t_shape == k_shape, "equal widths and kernel sizes",
              f"{t_shape[0]} -> {t_shape[1]}, kernel {t_shape[2]}",
              f"{k_shape[0]} -> {k_shape[1]}, kernel {k_shape[2]}")
    for what, t, k in (("strides", m.stride, layer.strides),
                       ("dilations", m.dilation, layer.dilation_rate),
                       ("groups", m.groups, layer.groups)):
        p.require(t == k, f"equal {what}", f"{what} {t}", f"{what} {k}")
    _require_bias(p, m.bias is not None, layer.use_bias)
    t_in, k_in = p.torch.call.input, p.keras.call.input
    t_pad, k_pad = _torch_padding(m, t_in[2:]), _keras_padding(layer, k_in[1:-1])
    zero_padded = _zero_padding_before(p)
    if zero_padded:  # Keras' way to pad symmetrically: ZeroPadding, then a 'valid' conv
        k_pad = tuple(a + b for a, b in zip(zero_padded, k_pad, strict=True))
    t_out, k_out = p.torch.call.output[2:], p.keras.call.output[1:-1]
    p.require((t_pad, t_out) == (k_pad, k_out), "equal padding",
              f"padding {m.padding}: before {t_pad}, output {t_out}",
              f"padding {layer.padding!r}: before {k_pad}, output {k_out}")
    converted = layers.conv(p.torch.key, p.keras.key, rank, layer.use_bias)
    return [p.mapped(converted, _variables(layer, "kernel", "bias"), layers.channels_last)]


def _zero_padding_before(p: Pair) -> tuple[int, ...]:
    """The padding before each spatial axis of a Keras ZeroPadding1D/2D whose output is the
    conv's input (the call that ended last before the conv started); () if none."""
    from onnxtwin.builders.keras_support import keras

    previous = max((c for c in p.keras_calls if 0 <= c.end < p.keras.call.start),
                   key=lambda c: c.end, default=None)
    kinds = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D)
    if previous is None or not isinstance(previous.obj, kinds) \
            or previous.output != p.keras.call.input:
        return ()
    padding = previous.obj.padding
    pairs = (padding,) if isinstance(previous.obj, keras.layers.ZeroPadding1D) else padding
    return tuple(int(before) for before, _ in pairs)


def _embedding(p: Pair) -> list[LayerMap]:
    m, layer = p.torch.obj, p.keras.obj
    p.require((m.num_embeddings, m.embedding_dim) == (layer.input_dim, layer.output_dim),
              "equal vocabularies and widths", f"{m.num_embeddings} x {m.embedding_dim}",
              f"{layer.input_dim} x {layer.output_dim}")
    p.require(m.max_norm is None, "no max_norm", f"max_norm {m.max_norm}")
    p.require(not layer.mask_zero, "mask_zero False (torch masks nothing)", "", "mask_zero")
    converted = layers.embedding(p.torch.key, p.keras.key)
    return [p.mapped(converted, _variables(layer, "embeddings"), layers.same_layout)]


def _last_axis(axis: Any, rank: int) -> bool:
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    return [a % rank for a in axes] == [rank - 1]


def _require_epsilon(p: Pair, eps: float, epsilon: float) -> None:
    p.require(math.isclose(eps, epsilon, rel_tol=1e-6), "equal epsilon", f"eps {eps:g}",
              f"epsilon {epsilon:g}")


def _batchnorm(p: Pair) -> list[LayerMap]:
    m, layer = p.torch.obj, p.keras.obj
    p.require(m.track_running_stats, "running statistics (track_running_stats=True)",
              "no running statistics")
    rank = len(p.keras.call.input)
    p.require(_last_axis(layer.axis, rank), "Keras normalising the last axis", "",
              f"axis {layer.axis}")
    features = p.keras.call.input[-1]
    p.require(m.num_features == features, "equal widths", f"{m.num_features} features",
              f"{features} features")
    p.require(m.affine == layer.center == layer.scale,
              "affine on both (Keras center and scale) or neither", f"affine {m.affine}",
              f"center {layer.center}, scale {layer.scale}")
    _require_epsilon(p, m.eps, layer.epsilon)
    converted = layers.batchnorm(p.torch.key, p.keras.key, m.affine)
    paths = _variables(layer, "gamma", "beta", "moving_mean", "moving_variance")
    return [p.mapped(converted, paths, layers.channels_moved)]


def _layernorm(p: Pair) -> list[LayerMap]:
    m, layer = p.torch.obj, p.keras.obj
    shape = tuple(m.normalized_shape)
    p.require(len(shape) == 1, "normalising the last axis only", f"normalized_shape {shape}")
    p.require(_last_axis(layer.axis, len(p.keras.call.input)) and not layer.rms_scaling,
              "Keras normalising the last axis, without rms_scaling", "",
              f"axis {layer.axis}, rms_scaling {layer.rms_scaling}")
    width = p.keras.call.input[-1]
    p.require(shape[0] == width, "equal widths", f"width {shape[0]}", f"width {width}")
    scale = m.weight is not None
    center = m.bias is not None
    p.require((scale, center) == (layer.scale, layer.center),
              "weight and bias as Keras scale and center", f"weight {scale}, bias {center}",
              f"scale {layer.scale}, center {layer.center}")
    _require_epsilon(p, m.eps, layer.epsilon)
    converted = layers.layernorm(p.torch.key, p.keras.key, scale, center)
    return [p.mapped(converted, _variables(layer, "gamma", "beta"), layers.same_layout)]


def _rnn_align(module, layer_index: int) -> layers.Align:
    """Only the last layer of a torch RNN shows its output; batch_first=False transposed."""
    if layer_index < module.num_layers - 1:
        return layers.hidden
    return layers.final_state if module.batch_first else layers.sequence_first(
        layers.final_state)


def _rnn(p: Pair) -> list[LayerMap]:
    m, layer, index = p.torch.obj, p.keras.obj, p.torch.rnn_layer
    backward = getattr(layer, "backward_layer", None)
    forward = layer.forward_layer if backward is not None else layer
    directions = 2 if m.bidirectional else 1
    p.require(m.bidirectional == (backward is not None), "bidirectional on both or neither",
              f"bidirectional {m.bidirectional}")
    if backward is not None:
        p.require(layer.merge_mode == "concat", "merge_mode 'concat' (torch concatenates)",
                  "", f"merge_mode {layer.merge_mode!r}")
    p.require(not forward.go_backwards, "go_backwards False", "", "go_backwards")
    projection = getattr(m, "proj_size", 0)
    p.require(projection == 0, "no projection", f"proj_size {projection}")
    cell = forward.cell
    t_in = m.input_size if index == 0 else m.hidden_size * directions
    k_in = int(cell.kernel.shape[0])
    p.require((t_in, m.hidden_size) == (k_in, cell.units), "equal widths",
              f"{t_in} -> {m.hidden_size}", f"{k_in} -> {cell.units}")
    _require_bias(p, m.bias, cell.use_bias)
    activations = (cell.activation.__name__, cell.recurrent_activation.__name__)
    p.require(activations == ("tanh", "sigmoid"),
              "activation tanh and recurrent_activation sigmoid (as torch)", "",
              f"activation {activations[0]}, recurrent_activation {activations[1]}")
    if p.torch.kind == "gru":
        p.require(cell.reset_after, "reset_after=True (torch resets after the matmul)", "",
                  "reset_after=False")
    convert = layers.lstm if p.torch.kind == "lstm" else layers.gru
    align = _rnn_align(m, index)
    return [p.mapped(convert(p.torch.key, p.keras.key, reverse, index, m.bias),
                     _variables(side.cell, "kernel", "recurrent_kernel", "bias"), align)
            for reverse, side in enumerate(s for s in (forward, backward) if s is not None)]


def _attention(p: Pair) -> list[LayerMap]:
    m, layer = p.torch.obj, p.keras.obj
    p.require(m._qkv_same_embed_dim, "kdim = vdim = embed_dim (packed in_proj)",
              f"kdim {m.kdim}, vdim {m.vdim}")
    p.require(m.bias_k is None and not m.add_zero_attn, "no add_bias_kv or add_zero_attn",
              "add_bias_kv or add_zero_attn")
    d, heads = m.embed_dim, m.num_heads
    p.require(heads == layer.num_heads, "equal heads", f"{heads} heads",
              f"{layer.num_heads} heads")
    sublayers = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
    kernels = [tuple(int(n) for n in s.kernel.shape) for s in sublayers]
    head = (d, heads, d // heads)
    p.require(kernels == [head, head, head, (heads, d // heads, d)],
              "key_dim = value_dim = embed_dim / heads, query, key, value widths embed_dim",
              f"embed_dim {d}",
              f"key_dim {layer.key_dim}, value_dim {layer.value_dim}, widths "
              f"{[k[0] for k in kernels[:3]]}")
    _require_bias(p, m.in_proj_bias is not None, layer.use_bias)
    converted = layers.attention(p.torch.key, p.keras.key, heads, layer.use_bias)
    paths = tuple(v for s in sublayers for v in _variables(s, "kernel", "bias"))
    align = layers.same_layout if m.batch_first else layers.sequence_first(layers.same_layout)
    return [p.mapped(converted, paths, align)]


PAIRS: dict[str, Callable[[Pair], list[LayerMap]]] = {
    "conv1d": _conv, "conv2d": _conv, "dense": _dense, "embedding": _embedding,
    "batchnorm": _batchnorm, "layernorm": _layernorm, "lstm": _rnn, "gru": _rnn,
    "attention": _attention}
