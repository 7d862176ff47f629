"""A model's I/O signature and the base class of every family's spec."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from onnxtwin.builders import grids
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import safe_name, shown
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE

Dim = int | str
"""A fixed size, or the name of a dynamic dimension (`batch`, `seq`)."""

MAX_WIDTH = 2**16
"""Largest width of a layer (channels, units, classes, embedding size, image side)."""
MAX_VOCAB = 2**24
"""Most token ids a model may take (its embedding's rows)."""
MAX_LAYERS = 64
"""Most layers of one kind a spec may stack."""
MAX_PARAMETERS = 2**28
"""Most weights a spec may ask for: 1 GiB in float32, counted before anything is built."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: numpy dtype name and shape with named dynamic dims."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    vocab: int | None = None
    """For token inputs: valid ids are 0 <= id < vocab."""
    range: tuple[float, float] | None = None
    """Where sample values are drawn, [low, high): a user entry's declared range."""
    channels_last: bool = False
    """The Keras model takes this (channels-first) input with its axis 1 moved last."""


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs that the torch twin, the Keras twin and both ONNX files share."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_dims: tuple[tuple[str, int], ...] = ()
    """(dim, largest size) for dims the model bounds, e.g. a Transformer's seq (its
    positions); stamped, so that a deployment refuses a longer input in one line."""

    @property
    def dims(self) -> tuple[str, ...]:
        """The named dynamic dims of the inputs, in order of first appearance."""
        return tuple(dict.fromkeys(d for t in self.inputs for d in t.shape
                                   if isinstance(d, str)))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def channels_last(self) -> tuple[bool, ...]:
        """Per input, whether the Keras model takes it with axis 1 moved last."""
        return tuple(t.channels_last for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def token_classifier(vocab: int, classes: int, max_seq: int | None = None) -> Signature:
    """`tokens` int64 [batch, seq] (ids below `vocab`, seq up to `max_seq` if given) ->
    `logits` float32 [batch, classes]."""
    return Signature(inputs=(TensorSpec("tokens", "int64", ("batch", "seq"), vocab=vocab),),
                     outputs=(TensorSpec("logits", "float32", ("batch", classes)),),
                     max_dims=() if max_seq is None else (("seq", max_seq),))


@dataclass(frozen=True)
class ModelSpec:
    """Base of the family specs: a frozen, hashable description of one architecture, and the
    whole contract of its family.

    Subclasses set `family`, add their hyper-parameters as fields, and implement `check`,
    `parameter_count`, `signature`, `torch_model`, `keras_model` and `layer_maps`; `name`
    is the variant's name in the registry, and a folder and file name (so a safe one).
    Policy is class attributes (as in Optimum's export configs): the grids the gate and
    the matrix run, and the float32 tolerance.
    """

    family: ClassVar[str]
    frameworks: ClassVar[tuple[str, ...]] = ("torch", "keras")
    """The sides a model of this spec has (a user entry may have one)."""
    default_source: ClassVar[str] = "torch"
    """Whose initialisation (or weights) the other side receives by default."""
    GATE_GRID: ClassVar[Mapping[str, tuple[int, ...]]] = grids.GATE
    MATRIX_GRID: ClassVar[Mapping[str, tuple[int, ...]]] = grids.MATRIX
    TOLERANCE: ClassVar[float] = FLOAT32_ABS_TOLERANCE
    name: str

    def __post_init__(self) -> None:
        """Name, types, bounds, then size: a spec that exists can be built in bounded memory."""
        safe_name(self.name, f"{self.family} spec name")
        for f in dataclasses.fields(self):
            _check_type(self, f.name, getattr(self, f.name), f.default)
        self.check()
        count = self.parameter_count()
        require(count <= MAX_PARAMETERS, self,
                f"at most {MAX_PARAMETERS} parameters (1 GiB of float32)", count)

    def check(self) -> None:
        """Raise OnnxtwinError if the hyper-parameters cannot make a model."""

    def parameter_count(self) -> int:
        """Weights and fixed tables of one twin, from the hyper-parameters alone (after
        `check`): bounded before anything is allocated."""
        raise NotImplementedError

    @property
    def signature(self) -> Signature:
        raise NotImplementedError

    def torch_model(self):
        """A new torch twin (torch's default initialisation)."""
        raise NotImplementedError

    def keras_model(self):
        """A new Keras twin (Keras' default initialisation)."""
        raise NotImplementedError

    def layer_maps(self) -> list:
        """The LayerMaps (onnxtwin.builders.layers) of every parameterised layer, in call order."""
        raise NotImplementedError

    def load_weights(self, model):
        """The source model with the spec's weights file loaded (families have none)."""
        return model

    def validate(self) -> None:
        """Raise OnnxtwinError if this spec's models cannot be made or run at its points
        (a family's always can; a user's entry is tried, before any work is done)."""

    def keras_float64(self, model):
        """The Keras model in float64: the oracle of an entry without torch."""
        raise NotImplementedError

    def match_layers(self, torch_model, keras_model) -> list:
        """The LayerMaps between two models of this spec: a family knows them from its
        hyper-parameters; a user's pair finds them by running both (builders.matching)."""
        return self.layer_maps()

    def example_dims(self) -> dict[str, int]:
        """The sizes at which the torch exporter traces the model (grids.EXPORT_EXAMPLE)."""
        return grids.restrict(grids.EXPORT_EXAMPLE, self.signature.dims)

    def timing_dims(self) -> dict[str, int]:
        """The one point at which `check` times each path (grids.TIMING)."""
        return grids.restrict(grids.TIMING, self.signature.dims)

    def gate_points(self) -> list[dict[str, int]]:
        """The points of GATE_GRID over this signature's dims, within its max_dims."""
        return self._within(grids.combinations(self.GATE_GRID, self.signature.dims))

    def matrix_points(self) -> list[dict[str, int]]:
        """The points of MATRIX_GRID over this signature's dims, within its max_dims."""
        return self._within(grids.combinations(self.MATRIX_GRID, self.signature.dims))

    def _within(self, points: list[dict[str, int]]) -> list[dict[str, int]]:
        largest = dict(self.signature.max_dims)
        return [p for p in points if all(v <= largest.get(d, v) for d, v in p.items())]

    def init_for_training(self, model) -> None:
        """Re-initialise a new torch twin before training; torch's defaults unless overridden."""

    def hyperparameters(self) -> dict[str, object]:
        """Every field but the name, as JSON-ready values."""
        fields = dataclasses.asdict(self)
        del fields["name"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    def described(self) -> str:
        """What the spec is, in one line for `onnxtwin models`: its hyper-parameters."""
        return ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())

    @property
    def spec_hash(self) -> str:
        """sha256 of family and hyper-parameters: equal for equal architectures."""
        text = json.dumps({"family": self.family, **self.hyperparameters()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def require(condition: bool, spec: ModelSpec, what: str, given: object) -> None:
    """Raise a one-line OnnxtwinError naming the spec, what was expected and what was given."""
    if not condition:
        raise OnnxtwinError(f"{spec.family} spec {spec.name!r}: expected {what}, "
                            f"got {shown(given)}")


def require_range(spec: ModelSpec, field: str, low: int | float, high: int | float) -> None:
    """A field (or each entry of a tuple field) lies in [low, high]; NaN never does."""
    value = getattr(spec, field)
    values = value if isinstance(value, tuple) else (value,)
    require(all(low <= v <= high for v in values), spec,
            f"{field}{' all' if isinstance(value, tuple) else ''} >= {low} and <= {high}", value)


def require_widths(spec: ModelSpec, *fields: str) -> None:
    """Each of `fields` is a width in [1, MAX_WIDTH]; a tuple holds at most MAX_LAYERS."""
    for field in fields:
        value = getattr(spec, field)
        if isinstance(value, tuple):
            require(len(value) <= MAX_LAYERS, spec, f"at most {MAX_LAYERS} entries in {field}",
                    len(value))
        require_range(spec, field, 1, MAX_WIDTH)


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_type(spec: ModelSpec, field: str, value: object, default: object) -> None:
    """A field must have its default's type (a tuple: of its default's element type)."""
    if default is dataclasses.MISSING:
        return
    expected = float if isinstance(default, float) else type(default)
    ok = type(value) is expected or (expected is float and type(value) is int)
    if ok and isinstance(default, tuple) and default:
        ok = bool(value) and all(type(v) is type(default[0]) for v in value)
        expected_text = f"a non-empty tuple of {_type_name(default[0])}"
    else:
        expected_text = expected.__name__
    require(ok, spec, f"{field} to be {expected_text}", value)
