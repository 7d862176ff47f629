"""Deterministic sample inputs that follow a spec's signature."""

from __future__ import annotations

import numpy as np

from onnxtwin.builders.signature import ModelSpec
from onnxtwin.runtime.errors import OnnxtwinError


def sample_inputs(spec: ModelSpec, batch: int, seq: int | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every signature input: floats in [0, 1); token rows left-padded with 0.

    Row 0 is never padded; with batch > 1 and seq > 1 the last row is half padding,
    so padding is always present. Every row keeps at least one real token.
    """
    rng = np.random.default_rng(seed)
    sizes = {"batch": batch, "seq": seq}
    out = {}
    for t in spec.signature.inputs:
        shape = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in t.shape)
        if any(d is None or d < 1 for d in shape):
            raise OnnxtwinError(f"input {t.name!r}: expected positive sizes for {t.shape}, "
                                f"got batch={batch}, seq={seq}")
        if t.vocab is None:
            out[t.name] = rng.random(shape, dtype=np.float32)
            continue
        tokens = rng.integers(1, t.vocab, size=shape, dtype=np.int64)
        lengths = rng.integers(1, shape[1] + 1, size=shape[0])
        lengths[0] = shape[1]
        if shape[0] > 1 and shape[1] > 1:
            lengths[-1] = shape[1] // 2
        tokens[np.arange(shape[1]) < (shape[1] - lengths)[:, None]] = 0
        out[t.name] = tokens
    return out


CHECK_BATCHES = (1, 7)
CHECK_SEQ_LENGTHS = (1, 12, 50)


def check_shapes(spec: ModelSpec) -> list[tuple[int, int | None]]:
    """(batch, seq) pairs every check runs: batch 1 and 7; for token models seq 1, 12, 50."""
    seqs = CHECK_SEQ_LENGTHS if has_seq(spec) else (None,)
    return [(b, s) for b in CHECK_BATCHES for s in seqs]


def has_seq(spec: ModelSpec) -> bool:
    """Whether the spec's inputs have a `seq` dimension."""
    return any("seq" in t.shape for t in spec.signature.inputs)
