"""Float16 copies of exported models, accepted only within a stated tolerance of float32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.runtime.comparison import Case, compare_paths
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path
from onnxtwin.runtime.paths import OnnxPath
from onnxtwin.runtime.session import Session

FLOAT16_REL_TOLERANCE = 5e-3
"""Max abs error over the output's scale for a float16 model against its float32 source.

float16 has an 11-bit significand (rounding step 4.9e-4 of a value); a few roundings
through matmuls and activations stay well inside 1% of the logits' scale.
"""


@dataclass(frozen=True)
class Float16Result:
    """The written file, the provider that validated it, and its worst error against float32."""

    path: Path
    provider: str
    max_abs: float
    max_rel: float


def to_float16(source: str | Path, destination: str | Path, inputs: list[dict[str, np.ndarray]],
               provider: str = "cuda", tolerance: float = FLOAT16_REL_TOLERANCE) -> Float16Result:
    """Convert weights and activations to float16 (inputs and outputs stay float32).

    Every input set is run through both models on `provider` (strict); the file is
    written only if each output's max_rel error stays within `tolerance`.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    reference = Session(source, provider, strict=True)
    with atomic_path(destination) as tmp:
        onnx.save(model, str(tmp))
        half = Session(tmp, provider, strict=True)
        checks = compare_paths([OnnxPath(half, "float16")], OnnxPath(reference, "float32"),
                               [Case({}, x) for x in inputs], float("inf"),
                               pairs="reference").checks  # judged relative to scale below
        max_abs = max(c.metrics.max_abs for c in checks)
        max_rel = max(c.metrics.max_rel for c in checks)
        if not max_rel <= tolerance:
            raise OnnxtwinError(f"float16 copy of {Path(source).name}: expected max error within "
                                f"{tolerance:g} of the output scale, got {max_rel:.3g}")
    return Float16Result(Path(destination), half.provider, max_abs, max_rel)
