"""Parity assertions for a user's own pair: torch vs Keras, or an ONNX file vs its framework.

The same metrics as the matrix (max abs, max rel to the output scale, argmax agreement,
NaN/Inf), with a failure message that shows every comparison.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxtwin.runtime import FLOAT32_ABS_TOLERANCE, Comparison, Session, compare

Inputs = Mapping[str, np.ndarray]


def twins_agree(torch_model: Any, keras_model: Any, inputs: Inputs,
                oracle: bool = True) -> dict[str, Comparison]:
    """torch vs Keras on the same inputs (positional, in mapping order), and each vs float64 torch.

    The float64 oracle runs a deep copy of the torch model in double precision.
    """
    import torch

    from onnxtwin.builders.twins import run_module

    args = list(inputs.values())
    torch_out = run_module(torch_model.eval(), args, torch.float32)
    keras_out = np.asarray(keras_model(args, training=False))
    results = {"torch vs keras": compare(torch_out, keras_out)}
    if oracle:
        reference = run_module(copy.deepcopy(torch_model).double(), args, torch.float64)
        results["torch vs oracle"] = compare(torch_out, reference)
        results["keras vs oracle"] = compare(keras_out, reference)
    return results


def assert_twins_agree(torch_model: Any, keras_model: Any, inputs: Inputs,
                       tolerance: float = FLOAT32_ABS_TOLERANCE, oracle: bool = True) -> None:
    """AssertionError, listing every comparison, unless all are within `tolerance` (max abs)."""
    _assert(twins_agree(torch_model, keras_model, inputs, oracle), tolerance)


def assert_onnx_matches(path: str | Path, reference: Any, inputs: Inputs,
                        tolerance: float = FLOAT32_ABS_TOLERANCE, provider: str = "cpu") -> None:
    """An ONNX file's first output on onnxruntime against a torch module, Keras model or callable.

    `inputs` are named as the file's inputs; the reference receives them positionally
    (a callable receives the mapping). The provider is strict: no silent CPU fallback.
    """
    session = Session(path, provider, strict=True)
    got = session.run(inputs)[session.outputs[0].name]
    expected = _reference_runner(reference)(inputs)
    _assert({f"{Path(path).name} on {session.provider} vs reference": compare(got, expected)},
            tolerance)


def _reference_runner(reference: Any) -> Callable[[Inputs], np.ndarray]:
    if hasattr(reference, "state_dict"):  # a torch module
        import torch

        from onnxtwin.builders.twins import run_module

        return lambda x: run_module(reference.eval(), list(x.values()), torch.float32)
    if hasattr(reference, "get_layer"):  # a Keras model
        return lambda x: np.asarray(reference(list(x.values()), training=False))
    return lambda x: np.asarray(reference(x))


def _assert(results: dict[str, Comparison], tolerance: float) -> None:
    if all(c.passed(tolerance) for c in results.values()):
        return
    lines = [f"parity failed (tolerance {tolerance:g} max abs):"]
    for name, c in results.items():
        verdict = "ok" if c.passed(tolerance) else "FAIL"
        lines.append(f"  {name}: max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g}, argmax "
                     f"agreement {c.argmax_agreement:.1%}, NaN/Inf {c.nonfinite}  {verdict}")
    raise AssertionError("\n".join(lines))
