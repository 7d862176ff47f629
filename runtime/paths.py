"""A path: one named way to compute a model, from {input name: array} to {output name: array}.

Every place that runs a model (the gate, the matrix, accuracy parity, the pytest
assertions, the benchmarks) runs a `ModelPath`. As in Polygraphy's runners, the public
`run` checks the inputs and outputs against the path's names and calls `_run`, so each
kind of path only says how it computes. The framework kinds (torch, Keras, the float64
oracle) live in onnxtwin.builders.paths; this module holds the base and the torch-free
kind, an ONNX file on an onnxruntime provider.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError, cause

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class PathInfo:
    """What a path is: its name, the framework (torch, keras, onnx...), provider, dtype, file."""

    name: str
    framework: str
    provider: str | None = None
    file: str | None = None
    dtype: str = "float32"


class ModelPath(ABC):
    """A named way to compute a model with fixed input names; output names given, or (empty)
    `output_0`, `output_1`, ... in the order the model returns them."""

    def __init__(self, info: PathInfo, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.info = info
        self.input_names = tuple(inputs)
        self.output_names = tuple(outputs)

    @property
    def name(self) -> str:
        return self.info.name

    def run(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Compute every output from every input (by name); refuse missing or extra names."""
        if sorted(inputs) != sorted(self.input_names):
            raise OnnxtwinError(f"path {self.name!r}: expected inputs {list(self.input_names)}, "
                                f"got {sorted(inputs)}")
        try:
            outputs = self._run([inputs[n] for n in self.input_names])
        except OnnxtwinError:
            raise
        except Exception as e:  # a framework's own error: one line, naming the path
            raise OnnxtwinError(f"path {self.name!r}: expected the model to run, got "
                                f"{type(e).__name__}: {cause(e)}") from None
        if isinstance(outputs, Mapping):  # outputs by name: take the declared ones
            missing = [n for n in self.output_names if n not in outputs]
            if missing:
                raise OnnxtwinError(f"path {self.name!r}: expected outputs "
                                    f"{list(self.output_names)}, the model gave {list(outputs)}")
            outputs = [outputs[n] for n in self.output_names] if self.output_names \
                else list(outputs.values())
        names = self.output_names or tuple(f"output_{i}" for i in range(len(outputs)))
        if len(outputs) != len(names):
            raise OnnxtwinError(f"path {self.name!r}: expected {len(names)} outputs "
                                f"{list(names)}, the model gave {len(outputs)}")
        return dict(zip(names, outputs, strict=True))

    @abstractmethod
    def _run(self, args: list[np.ndarray]) -> Sequence[np.ndarray] | Mapping[str, np.ndarray]:
        """The outputs (in `output_names` order, or by name) for the inputs in `input_names`
        order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class OnnxPath(ModelPath):
    """An ONNX file on one onnxruntime provider, through a validating `Session`."""

    def __init__(self, session, name: str | None = None, framework: str = "onnx") -> None:
        self.session = session
        alias = session.requested
        info = PathInfo(name or f"{session.path.name}@{alias}", framework, session.provider,
                        session.path.name, _float_dtype(session))
        super().__init__(info, [t.name for t in session.inputs],
                         [t.name for t in session.outputs])

    def _run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(dict(zip(self.input_names, args, strict=True)))
        return [outputs[n] for n in self.output_names]


def _float_dtype(session) -> str:
    """The dtype of the session's first floating-point output (float32 when there is none)."""
    floats = [t.dtype for t in session.outputs if t.dtype.startswith("float")]
    return floats[0] if floats else "float32"


class FunctionPath(ModelPath):
    """Any callable from positional arrays to the outputs (a tuple, a list or one array)."""

    def __init__(self, info: PathInfo, fn, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        super().__init__(info, inputs, outputs)
        self.fn = fn

    def _run(self, args: list[np.ndarray]) -> Sequence[np.ndarray]:
        result = self.fn(*args)
        if isinstance(result, Mapping):
            return {k: np.asarray(v) for k, v in result.items()}
        return [np.asarray(r) for r in (result if isinstance(result, list | tuple) else [result])]
