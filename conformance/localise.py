"""Where twins part ways: compare their layers' activations and name the first that diverges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxtwin.builders import Twins
from onnxtwin.builders.layers import LayerMap
from onnxtwin.builders.matching import (
    keras_calls,
    keras_key,
    keras_layers,
    run_keras,
    run_torch,
    torch_hooks,
)


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

    A layer diverges when max abs > tolerance x max(1, output scale). Torch outputs come
    from forward hooks (gradients enabled, so nn.TransformerEncoderLayer calls its
    submodules), Keras outputs from wrapping each layer's call: subclassed and nested Keras
    models work as functional ones do.
    """
    pairs: dict[tuple[str, str], LayerMap] = {}
    for m in twins.layer_maps():  # one pair per layer: a BiLSTM's two directions are one
        pairs.setdefault((m.torch_module, m.keras_layer), m)
    specs = twins.spec.signature.inputs
    by_key = _keras_layers(twins.keras_model, {k for _, k in pairs})
    torch_out = _torch_outputs(twins.torch_model, [inputs[t.name] for t in specs],
                               {t for t, _ in pairs})
    keras_out = _keras_outputs(twins.keras_model, [
        np.moveaxis(inputs[t.name], 1, -1) if t.channels_last else inputs[t.name]
        for t in specs], by_key)
    diffs, first = [], None
    for (torch_name, keras_name), layer_map in pairs.items():
        t, k = torch_out.get(torch_name), keras_out.get(keras_name)
        if t is not None and k is not None:
            t = layer_map.align(t, by_key[keras_name])
        if t is None or k is None or t.shape != k.shape:
            diffs.append(LayerDiff(torch_name, keras_name, None, False))
            continue
        error = float(np.abs(t - k).max())
        diverged = not error <= tolerance * max(1.0, float(np.abs(t).max()))
        diffs.append(LayerDiff(torch_name, keras_name, error, diverged))
        if diverged and first is None:
            first = f"{torch_name} (torch) / {keras_name} (keras)"
    return Localisation(first, tuple(diffs))


def _first(output):
    """A layer's output, or the first of several (an RNN's sequence, attention's values)."""
    return output[0] if isinstance(output, list | tuple) else output


def _torch_outputs(model, args: list[np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """Each named module's output at its first call."""
    modules = {n: m for n, m in model.named_modules() if n in names}
    name_of = {id(m): n for n, m in modules.items()}
    captured: dict[str, np.ndarray] = {}

    def keep(module, output):
        captured.setdefault(name_of[id(module)], _first(output).detach().numpy().copy())

    with torch_hooks(modules.values(), lambda *_: None, keep):
        run_torch(model, args)
    return captured


def _keras_layers(model, keys: set[str]) -> dict:
    """The Keras layers named by `keys`: a layer's path, else its name."""
    found = {}
    every = keras_layers(model)
    for name in (keras_key, lambda layer: layer.name):
        for layer in every:
            if name(layer) in keys:
                found.setdefault(name(layer), layer)
    return found


def _keras_outputs(model, args: list[np.ndarray], wanted: dict) -> dict[str, np.ndarray]:
    """Each wanted layer's output at its first call."""
    captured: dict[int, np.ndarray] = {}

    def keep(layer, output):
        captured.setdefault(id(layer), np.asarray(_first(output)))

    with keras_calls({id(v): v for v in wanted.values()}.values(), lambda *_: None, keep):
        run_keras(model, args)
    return {key: captured[id(layer)] for key, layer in wanted.items() if id(layer) in captured}
