"""Parity assertions for a user's own pair: torch vs Keras, or an ONNX file vs its framework.

Thin uses of the comparison engine (onnxtwin.runtime.comparison) on one case, every
output compared, with a failure message that shows every comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxtwin.runtime import FLOAT32_ABS_TOLERANCE, Session
from onnxtwin.runtime.comparison import Case, Comparisons, compare_paths
from onnxtwin.runtime.errors import OnnxtwinError, cause
from onnxtwin.runtime.paths import FunctionPath, ModelPath, OnnxPath, PathInfo

Inputs = Mapping[str, np.ndarray]


def twins_agree(torch_model: Any, keras_model: Any, inputs: Inputs, oracle: bool = True,
                tolerance: float = FLOAT32_ABS_TOLERANCE) -> Comparisons:
    """torch vs Keras on the same inputs (positional, in mapping order), and each vs float64
    torch (a deep copy of the torch model in double precision)."""
    from onnxtwin.builders.paths import KerasPath, TorchPath, oracle_path

    names = list(inputs)
    reference = oracle_path(torch_model, names, ()) if oracle else None
    return compare_paths([TorchPath(torch_model, names, ()), KerasPath(keras_model, names, ())],
                         reference, [Case({}, dict(inputs))], tolerance)


def assert_twins_agree(torch_model: Any, keras_model: Any, inputs: Inputs,
                       tolerance: float = FLOAT32_ABS_TOLERANCE, oracle: bool = True,
                       transfer: bool = False, source: str = "torch",
                       channels_last: Sequence[str] = ()) -> None:
    """AssertionError, listing every comparison, unless all are within `tolerance` (max abs).

    With `transfer`, the weights first move from `source` into the other model (layers
    matched in call order, onnxtwin.builders.matching). A failure names the first layer
    pair whose outputs diverge, when the layers can be matched. Inputs named in
    `channels_last` are given channels-first (torch's layout) and moved for Keras.
    """
    from onnxtwin.builders import Twins, build_twins

    twins = None
    if transfer or channels_last:  # the models as an entry: matched layers, moved inputs
        spec = _user_spec(torch_model, keras_model, inputs, source, channels_last)
        twins = build_twins(spec) if transfer else Twins(spec, torch_model, keras_model)
        result = _agree(twins, inputs, oracle, tolerance)
    else:
        result = twins_agree(torch_model, keras_model, inputs, oracle, tolerance)
    if not result.passed:
        _assert(result, tolerance, _first_divergent(twins, torch_model, keras_model, inputs,
                                                    tolerance))


def _user_spec(torch_model: Any, keras_model: Any, inputs: Inputs, source: str,
               channels_last: Sequence[str] = ()):
    """The entry of these two objects; the inputs' first axis is the batch (its size the
    one given), the rest fixed."""
    from onnxtwin.builders import entry_from_models

    unknown = sorted(set(channels_last) - set(inputs))
    if unknown:
        raise OnnxtwinError(f"channels_last: expected names of the inputs {list(inputs)}, "
                            f"got {unknown}")
    declared = [{"name": n, "dtype": np.asarray(a).dtype.name,
                 "shape": ["batch", *np.shape(a)[1:]], "channels_last": n in channels_last,
                 **({"range": [int(np.min(a)), int(np.max(a)) + 1]}
                    if np.asarray(a).dtype.kind in "iu" else {})}
                for n, a in inputs.items()]
    batch = len(next(iter(inputs.values())))
    return entry_from_models(torch_model, keras_model, inputs=declared, source=source,
                             dims={"batch": [batch]}, name="assert-twins-agree",
                             example={"batch": batch} if batch >= 2 else None)


def _agree(twins, inputs: Inputs, oracle: bool, tolerance: float) -> Comparisons:
    """The twins' own paths (which move channels-last inputs) compared on `inputs`."""
    return compare_paths([twins.torch, twins.keras], twins.oracle() if oracle else None,
                         [Case({}, dict(inputs))], tolerance)


def _first_divergent(twins, torch_model: Any, keras_model: Any, inputs: Inputs,
                     tolerance: float) -> str:
    """'first diverging layer: ...', or why the layers could not be compared."""
    from onnxtwin.builders import Twins
    from onnxtwin.conformance.localise import localise

    try:
        if twins is None:
            twins = Twins(_user_spec(torch_model, keras_model, inputs, "torch"), torch_model,
                          keras_model)
        found = localise(twins, dict(inputs), tolerance).first_divergent
    except Exception as e:  # a diagnosis only: the comparisons below still say what failed
        return f"layers not localised: {type(e).__name__}: {cause(e)}"
    if found:
        return f"first diverging layer: {found}"
    return ("every matched layer agrees: the cause is outside them (an activation, a pooling, "
            "a reshape, an op in forward)")


def assert_onnx_matches(path: str | Path, reference: Any, inputs: Inputs,
                        tolerance: float = FLOAT32_ABS_TOLERANCE, provider: str = "cpu") -> None:
    """An ONNX file on onnxruntime against a torch module, Keras model or callable, on every
    output of the file.

    `inputs` are named as the file's inputs; the reference receives them positionally
    (a callable receives the mapping). The provider is strict: no silent CPU fallback.
    """
    session = Session(path, provider, strict=True)
    onnx_path = OnnxPath(session, f"{Path(path).name} on {session.provider}")
    names, outputs = onnx_path.input_names, onnx_path.output_names
    result = compare_paths([onnx_path], _reference_path(reference, names, outputs),
                           [Case({}, dict(inputs))], tolerance, pairs="reference")
    _assert(result, tolerance)


def _reference_path(reference: Any, inputs: tuple[str, ...],
                    outputs: tuple[str, ...]) -> ModelPath:
    if hasattr(reference, "state_dict"):  # a torch module
        from onnxtwin.builders.paths import TorchPath

        return TorchPath(reference, inputs, outputs, "reference")
    if hasattr(reference, "get_layer"):  # a Keras model
        from onnxtwin.builders.paths import KerasPath

        return KerasPath(reference, inputs, outputs, "reference")
    return FunctionPath(PathInfo("reference", "python"),
                        lambda *args: reference(dict(zip(inputs, args, strict=True))),
                        inputs, outputs)


def _assert(result: Comparisons, tolerance: float, localised: str = "") -> None:
    if result.passed:
        return
    several = len({c.output for c in result.checks}) > 1
    lines = [f"parity failed (tolerance {tolerance:g} max abs):"]
    if localised:
        lines.append(f"  {localised}")
    for c in sorted(result.checks, key=lambda c: c.expected == result.reference):
        m, verdict = c.metrics, "ok" if c.passed else "FAIL"
        output = f" [{c.output}]" if several else ""
        lines.append(f"  {c.actual} vs {c.expected}{output}: max abs {m.max_abs:.3g}, max rel "
                     f"{m.max_rel:.3g}, argmax agreement {m.argmax_agreement:.1%}, NaN/Inf "
                     f"{m.nonfinite}  {verdict}" + (f" ({c.detail})" if c.detail else ""))
    raise AssertionError("\n".join(lines))
