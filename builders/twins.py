"""A twin pair: one spec, a torch model and a Keras model holding the same weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from onnxtwin.builders import grids
from onnxtwin.builders.paths import ORACLE, KerasFunctionPath, KerasPath, TorchPath, oracle_path
from onnxtwin.builders.registry import get_spec, make_spec
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.builders.weights import (
    Weights,
    keras_state,
    keras_to_torch,
    load_keras_state,
    load_torch_state,
    read_weights,
    save_weights,
    torch_state,
    torch_to_keras,
    weights_hash,
)
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path, existing_file, write_json

Source = Literal["torch", "keras"]
SOURCES: tuple[str, ...] = get_args(Source)
TORCH_FILE, KERAS_FILE, SPEC_FILE = "torch.safetensors", "keras.weights.h5", "spec.json"


@dataclass
class Twins:
    """The torch model (in eval mode) and the Keras model of one spec, with equal weights.

    A user entry with one framework has only that side (the other is None).
    """

    spec: ModelSpec
    torch_model: torch.nn.Module | None
    keras_model: Any
    _keras_function: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def frameworks(self) -> tuple[str, ...]:
        """The sides present: ("torch", "keras"), or one of them."""
        return tuple(f for f, m in (("torch", self.torch_model), ("keras", self.keras_model))
                     if m is not None)

    @property
    def weights(self) -> Weights:
        """The canonical weights: the torch state dict as numpy arrays (a Keras-only entry:
        its variables by path)."""
        if self.torch_model is None:
            return keras_state(self.keras_model)
        return torch_state(self.torch_model)

    @property
    def torch(self) -> TorchPath:
        """The torch twin in float32."""
        return TorchPath(self._side("torch"), *self._names())

    @property
    def keras(self) -> KerasPath:
        """The Keras twin called eagerly."""
        return KerasPath(self._side("keras"), *self._names(),
                         channels_last=self.spec.signature.channels_last)

    @property
    def keras_compiled(self) -> KerasFunctionPath:
        """The Keras twin through its tf.function (traced once): how Keras is deployed."""
        if self._keras_function is None:
            from onnxtwin.builders.keras_support import keras_function

            self._keras_function = keras_function(self.spec, self._side("keras"))
        return KerasFunctionPath(self._keras_function, *self._names())

    def path(self, framework: str, compiled: bool = False):
        """The path of one side: torch, or keras (its tf.function if `compiled`)."""
        if framework == "torch":
            return self.torch
        return self.keras_compiled if compiled else self.keras

    def layer_maps(self) -> list:
        """The LayerMaps between this torch model and this Keras model, in call order."""
        return self.spec.match_layers(self._side("torch"), self._side("keras"))

    def oracle(self, jitter: int | None = None) -> TorchPath | KerasPath:
        """The torch twin run in float64 on the same float32 weights and inputs: the reference
        (see `oracle_path` for `jitter`). A Keras-only entry: its Keras model rebuilt in
        float64 (no jitter)."""
        if self.torch_model is None and jitter is None:
            return KerasPath(self.spec.keras_float64(self.keras_model), *self._names(),
                             name=ORACLE, channels_last=self.keras.channels_last)
        return oracle_path(self._side("torch"), *self._names(), jitter=jitter)

    def _side(self, framework: str):
        model = self.torch_model if framework == "torch" else self.keras_model
        if model is None:
            raise OnnxtwinError(f"model {self.spec.name!r}: expected a {framework} model, "
                                f"got an entry with only {self.frameworks[0]}")
        return model

    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.spec.signature.input_names, self.spec.signature.output_names

    def save(self, out_dir: str | Path) -> Path:
        """Write spec.json and each side's weights: torch.safetensors (the torch state dict),
        keras.weights.h5."""
        out = Path(out_dir)
        weights = self.weights
        meta = {"family": self.spec.family, "name": self.spec.name,
                "spec_hash": self.spec.spec_hash, "weights_hash": weights_hash(weights)}
        if self.torch_model is not None:
            save_weights(out / TORCH_FILE, weights, meta)
        if self.keras_model is not None:
            with atomic_path(out / KERAS_FILE) as tmp:
                self.keras_model.save_weights(str(tmp))
        write_json(out / SPEC_FILE, {**meta, "hyperparameters": self.spec.hyperparameters()})
        return out


def build_twins(model: str | ModelSpec, seed: int = grids.WEIGHT_SEED,
                source: Source | None = None) -> Twins:
    """Initialise `source`'s twin with `seed` (default: the spec's default source) and
    transfer its weights to the other one. A user entry's weights file replaces the
    initialisation; an entry with one framework has that side only.

    The same spec, seed and source give bit-identical weights.
    """
    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    spec.validate()
    grids.check_seed(seed)
    source = spec.default_source if source is None else source
    if source not in SOURCES:
        raise OnnxtwinError(f"source: expected 'torch' or 'keras', got {source!r}")
    if source not in spec.frameworks:
        raise OnnxtwinError(f"model {spec.name!r}: expected source among its frameworks "
                            f"{list(spec.frameworks)}, got {source!r}")
    if source == "torch":
        torch_model = spec.load_weights(seeded_torch_model(spec, seed))
        if "keras" not in spec.frameworks:
            return Twins(spec, torch_model.eval(), None)
        return from_weights(spec, torch_state(torch_model))
    from onnxtwin.builders.keras_support import seeded

    seeded(seed)
    keras_model = spec.load_weights(spec.keras_model())
    if "torch" not in spec.frameworks:
        return Twins(spec, None, keras_model)
    return from_keras(spec, keras_model)


def seeded_torch_model(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """The torch twin as `seed` initialises it (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.torch_model()


def from_weights(spec: ModelSpec, weights: Weights, origin: str = "weights") -> Twins:
    """Twins of `spec` carrying torch-layout `weights` (checked against the model)."""
    torch_model = spec.torch_model()
    load_torch_state(torch_model, weights, f"{spec.name}: {origin}")
    keras_model = spec.keras_model()
    load_keras_state(keras_model, torch_to_keras(spec.match_layers(torch_model, keras_model),
                                                 weights),
                     f"{spec.name}: torch -> keras")
    return Twins(spec, torch_model.eval(), keras_model)


def from_keras(spec: ModelSpec, keras_model) -> Twins:
    """Twins around a Keras model of `spec`, its weights transferred to a new torch model."""
    torch_model = spec.torch_model()
    maps = spec.match_layers(torch_model, keras_model)
    load_torch_state(torch_model, keras_to_torch(maps, keras_state(keras_model)),
                     f"{spec.name}: keras -> torch")
    return Twins(spec, torch_model.eval(), keras_model)


def load_twins(folder: str | Path) -> Twins:
    """Twins from a folder written by Twins.save (spec.json + torch.safetensors)."""
    folder = Path(folder)
    existing_file(folder / SPEC_FILE, f"the {SPEC_FILE} of twins saved by onnxtwin")  # no FIFO
    try:
        meta = json.loads((folder / SPEC_FILE).read_text())
        spec = make_spec(meta["family"], meta["name"], **meta["hyperparameters"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OnnxtwinError(f"twins folder {folder}: expected a readable {SPEC_FILE} with "
                            f"family, name and hyperparameters, got {type(e).__name__}: {e}") \
            from None
    weights, stored = read_weights(folder / TORCH_FILE)
    if stored.get("spec_hash") != spec.spec_hash:
        raise OnnxtwinError(f"{folder / TORCH_FILE}: expected weights for spec "
                            f"{spec.spec_hash[:12]}, got {stored.get('spec_hash', 'none')[:12]}")
    return from_weights(spec, weights, str(folder / TORCH_FILE))
