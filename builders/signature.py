"""A model's I/O signature and the base class of every family's spec."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from onnxtwin.runtime.errors import OnnxtwinError

Dim = int | str
"""A fixed size, or the name of a dynamic dimension (`batch`, `seq`)."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: numpy dtype name and shape with named dynamic dims."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    vocab: int | None = None
    """For token inputs: valid ids are 0 <= id < vocab."""


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs that the torch twin, the Keras twin and both ONNX files share."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ModelSpec:
    """Base of the family specs: a frozen, hashable description of one architecture.

    Subclasses set `family`, add their hyper-parameters as fields, and implement
    `signature` and `check`; `name` is the variant's name in the registry.
    """

    family: ClassVar[str]
    name: str

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(self, f.name, getattr(self, f.name), f.default)
        self.check()

    def check(self) -> None:
        """Raise OnnxtwinError if the hyper-parameters cannot make a model."""

    @property
    def signature(self) -> Signature:
        raise NotImplementedError

    def init_for_training(self, model) -> None:
        """Re-initialise a new torch twin before training; torch's defaults unless overridden."""

    def hyperparameters(self) -> dict[str, object]:
        """Every field but the name, as JSON-ready values."""
        fields = dataclasses.asdict(self)
        del fields["name"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @property
    def spec_hash(self) -> str:
        """sha256 of family and hyper-parameters: equal for equal architectures."""
        text = json.dumps({"family": self.family, **self.hyperparameters()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def require(condition: bool, spec: ModelSpec, what: str, given: object) -> None:
    """Raise a one-line OnnxtwinError naming the spec, what was expected and what was given."""
    if not condition:
        raise OnnxtwinError(f"{spec.family} spec {spec.name!r}: expected {what}, got {given!r}")


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
