"""Deterministic sample inputs that follow a signature, at one point of a grid of named dims."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxtwin.builders.signature import ModelSpec, Signature
from onnxtwin.runtime.errors import OnnxtwinError


def sample_inputs(model: ModelSpec | Signature, dims: Mapping[str, int] | None = None,
                  seed: int = 0, **named: int | None) -> dict[str, np.ndarray]:
    """Seeded inputs for every signature input, each of its dtype: floats in [0, 1), booleans
    fair coins; token rows left-padded with 0;
    an input with a declared `range` uniform in [low, high) (integers or floats by dtype).

    Sizes of named dims come from `dims` and keywords: `sample_inputs(spec, batch=7, seq=12)`.
    Row 0 is never padded; with more than one row and column the last row is half
    padding, so padding is always present. Every row keeps at least one real token.
    """
    signature = model.signature if isinstance(model, ModelSpec) else model
    sizes = {**(dims or {}), **named}
    rng = np.random.default_rng(seed)
    out = {}
    for t in signature.inputs:
        shape = tuple(sizes.get(d) if isinstance(d, str) else d for d in t.shape)
        if any(d is None or d < 1 for d in shape):
            given = ", ".join(f"{d}={sizes.get(d)}" for d in signature.dims)
            raise OnnxtwinError(f"input {t.name!r}: expected positive sizes for {t.shape}, "
                                f"got {given}")
        if t.range is not None:
            out[t.name] = _uniform(rng, t.dtype, shape, *t.range)
            continue
        if t.vocab is None:  # float32 drawn as always (the built-ins' inputs stay the same)
            out[t.name] = rng.random(shape, dtype=np.float32) if t.dtype == "float32" \
                else _uniform(rng, t.dtype, shape, 0.0, 1.0)
            continue
        tokens = rng.integers(1, t.vocab, size=shape, dtype=np.int64)
        lengths = rng.integers(1, shape[1] + 1, size=shape[0])
        lengths[0] = shape[1]
        if shape[0] > 1 and shape[1] > 1:
            lengths[-1] = shape[1] // 2
        tokens[np.arange(shape[1]) < (shape[1] - lengths)[:, None]] = 0
        out[t.name] = tokens
    return out


def _uniform(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], low: float,
             high: float) -> np.ndarray:
    """Values of `dtype` drawn uniformly in [low, high); booleans are fair coins."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind in "iu":
        return rng.integers(int(low), int(high), size=shape).astype(dtype)
    return (low + (high - low) * rng.random(shape)).astype(dtype)
