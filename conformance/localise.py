"""Where twins part ways: compare their layers' activations and name the first that diverges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxtwin.builders import Twins
from onnxtwin.builders.layers import LayerMap


@dataclass(frozen=True)
class LayerDiff:
    """One mapped layer: torch module, Keras layer, and their activations' max abs error."""

    torch: str
    keras: str
    max_abs: float | None
    """None when the activations cannot be aligned (reported, not judged)."""
    diverged: bool


@dataclass(frozen=True)
class Localisation:
    """The first mapped layer (in model order) whose output differs beyond the tolerance."""

    first_divergent: str | None
    layers: tuple[LayerDiff, ...]


def localise(twins: Twins, inputs: dict[str, np.ndarray], tolerance: float) -> Localisation:
    """Run both twins capturing every mapped layer's output and compare them in order.

    A layer diverges when max abs > tolerance x max(1, output scale). The torch side runs
    with gradients enabled, so nn.TransformerEncoderLayer takes its plain path and calls
    its submodules (the fused fast path skips their hooks).
    """
    modules = dict(twins.torch_model.named_modules())
    pairs: dict[tuple[str, str], LayerMap] = {}
    for m in twins.spec.layer_maps():  # one pair per layer: a BiLSTM's two directions are one
        pairs.setdefault((_owner(m.torch_names[0]), m.keras_paths[0].split("/")[0]), m)
    torch_out = _torch_activations(twins, inputs, [modules[t] for t, _ in pairs])
    keras_out = _keras_activations(twins, inputs, [k for _, k in pairs])
    diffs, first = [], None
    for (torch_name, keras_name), layer_map in pairs.items():
        t, k = torch_out.get(torch_name), keras_out[keras_name]
        if t is not None:
            t = layer_map.align(t, twins.keras_model.get_layer(keras_name))
        if t is None or t.shape != k.shape:
            diffs.append(LayerDiff(torch_name, keras_name, None, False))
            continue
        error = float(np.abs(t - k).max())
        diverged = not error <= tolerance * max(1.0, float(np.abs(t).max()))
        diffs.append(LayerDiff(torch_name, keras_name, error, diverged))
        if diverged and first is None:
            first = f"{torch_name} (torch) / {keras_name} (keras)"
    return Localisation(first, tuple(diffs))


def _owner(parameter: str) -> str:
    """The module that holds a parameter: 'rnns.0.weight_ih_l0_reverse' -> 'rnns.0'."""
    return parameter.rsplit(".", 1)[0] if "." in parameter else ""


def _torch_activations(twins: Twins, inputs: dict[str, np.ndarray],
                       modules: list) -> dict[str, np.ndarray]:
    import torch

    captured: dict[str, np.ndarray] = {}
    names = {id(m): n for n, m in twins.torch_model.named_modules()}

    def keep(module, _args, output):
        first = output[0] if isinstance(output, tuple) else output
        captured[names[id(module)]] = first.detach().numpy().copy()

    handles = [m.register_forward_hook(keep) for m in modules]
    args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name]))
            for t in twins.spec.signature.inputs]
    try:
        with torch.enable_grad():  # keeps torch off the fused fast paths that skip hooks
            twins.torch_model(*args)
    finally:
        for h in handles:
            h.remove()
    return captured


def _keras_activations(twins: Twins, inputs: dict[str, np.ndarray],
                       names: list[str]) -> dict[str, np.ndarray]:
    from onnxtwin.builders.keras_support import keras

    model = twins.keras_model
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    args = [inputs[t.name] for t in twins.spec.signature.inputs]
    outputs = probe(args, training=False)
    return {n: np.asarray(o) for n, o in zip(names, outputs, strict=True)}
