"""The samples reduced precision is judged and calibrated on.

- A trained model (its Dataset): the gate runs the whole test set; int8 calibration uses
  CALIBRATION_SAMPLES training samples, and the next CALIBRATION_SAMPLES choose the
  calibration method, never the test set.
- Random weights: the gate runs the matrix's inputs and can judge outputs only;
  calibration comes from a user's .npz (`--calibration`), checked against the signature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxtwin.builders import grids, sample_inputs
from onnxtwin.builders.datasets import Dataset
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.export.precision import GateData
from onnxtwin.export.quantize import Calibration
from onnxtwin.runtime.arrays import load_arrays
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.session import Session

GATE_BATCH = 250
CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 64
Arrays = dict[str, np.ndarray]


def gate_data(spec: ModelSpec, data: Dataset | None, seed: int = grids.MATRIX_SEED) -> GateData:
    """The whole labelled test set of `data`; else the matrix's seeded inputs (no labels)."""
    if data is None:
        return GateData("the matrix inputs (random weights, no labels: outputs only)",
                        tuple(sample_inputs(spec, dims, seed=seed)
                              for dims in spec.matrix_points()))
    name = spec.signature.input_names[0]
    return GateData(f"the {data.name} test set",
                    tuple({name: x} for x in _batches(data.x_test, GATE_BATCH)), data.y_test)


def dataset_calibration(spec: ModelSpec, data: Dataset, seed: int = grids.MATRIX_SEED
                        ) -> Calibration:
    """Seeded training samples: CALIBRATION_SAMPLES to calibrate, as many others held out."""
    order = np.random.default_rng(seed).permutation(len(data.y_train))
    name = spec.signature.input_names[0]
    calibrate, held_out = order[:CALIBRATION_SAMPLES], order[CALIBRATION_SAMPLES:
                                                             2 * CALIBRATION_SAMPLES]
    return Calibration(f"{len(calibrate)} {data.name} training samples",
                       tuple({name: x} for x in _batches(data.x_train[calibrate],
                                                         CALIBRATION_BATCH)),
                       tuple({name: x} for x in _batches(data.x_train[held_out],
                                                         CALIBRATION_BATCH)))


def file_calibration(path: str | Path, model: str | Path) -> Calibration:
    """A user's .npz (or .npy for one input) of samples stacked on the batch axis, checked
    against float32 `model`'s signature: four fifths calibrate, the rest are held out."""
    path = Path(path)
    session = Session(model, "cpu", strict=True)
    arrays = load_arrays(path, [i.name for i in session.inputs])
    try:
        session.validate(arrays)
    except OnnxtwinError as e:
        raise OnnxtwinError(f"--calibration {path}: expected samples that fit "
                            f"{Path(model).name}'s signature, got: {e}") from None
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1 or min(counts) < 2:
        raise OnnxtwinError(f"--calibration {path}: expected at least 2 samples, as many for "
                            f"every input, got {sorted(counts)}")
    n = counts.pop()
    cut = max(1, n * 4 // 5)

    def part(rows: slice) -> tuple[Arrays, ...]:
        picked = {k: v[rows] for k, v in arrays.items()}
        size = len(next(iter(picked.values())))
        return tuple({k: v[i: i + CALIBRATION_BATCH] for k, v in picked.items()}
                     for i in range(0, size, CALIBRATION_BATCH))

    return Calibration(f"{cut} samples of {path.name}", part(slice(0, cut)),
                       part(slice(cut, n)))


def _batches(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i: i + size] for i in range(0, len(x), size)]
