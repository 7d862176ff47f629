"""Weights as data: torch-layout arrays, transfer through LayerMaps, hashing, files.

The canonical weights of a twin pair are the torch state dict as numpy arrays
(`Weights`); the Keras side is a dict of Keras variable paths (`KerasWeights`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from onnxtwin.builders.layers import LayerMap
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path

Weights = dict[str, np.ndarray]
KerasWeights = dict[str, np.ndarray]


def _same_names(given: Iterable[str], expected: Iterable[str], what: str) -> None:
    given, expected = set(given), set(expected)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise OnnxtwinError(f"{what}: expected exactly the model's tensors; "
                            f"missing {missing[:5]}, unexpected {extra[:5]}")


def _same_shapes(given: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                 what: str) -> None:
    for name, shape in expected.items():
        if tuple(given[name].shape) != tuple(shape):
            raise OnnxtwinError(f"{what}: tensor {name!r} expected shape {tuple(shape)}, "
                                f"got {tuple(given[name].shape)}")


def _convert(maps: Iterable[LayerMap], given: Mapping[str, np.ndarray], to_keras: bool,
             what: str) -> dict[str, np.ndarray]:
    maps = list(maps)
    source = [m.torch_names if to_keras else m.keras_paths for m in maps]
    _same_names(given, (n for names in source for n in names), what)
    out: dict[str, np.ndarray] = {}
    for m, names in zip(maps, source, strict=True):
        convert, target = (m.to_keras, m.keras_paths) if to_keras else (m.to_torch, m.torch_names)
        arrays = convert(*(given[n] for n in names))
        out.update(zip(target, (np.asarray(a, order="C") for a in arrays), strict=True))
    return out


def torch_to_keras(maps: Iterable[LayerMap], weights: Mapping[str, np.ndarray]) -> KerasWeights:
    """Convert torch-layout weights to Keras variables, layer by layer."""
    return _convert(maps, weights, to_keras=True, what="torch weights")


def keras_to_torch(maps: Iterable[LayerMap], variables: Mapping[str, np.ndarray]) -> Weights:
    """Convert Keras variables to torch-layout weights, layer by layer."""
    return _convert(maps, variables, to_keras=False, what="keras weights")


def torch_state(model) -> Weights:
    """A torch module's persistent state as float32 numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_torch_state(model, weights: Mapping[str, np.ndarray], origin: str) -> None:
    """Load torch-layout weights into a module after checking names and shapes."""
    import torch

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _same_names(weights, expected, origin)
    _same_shapes(weights, expected, origin)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32))
                           for k, v in weights.items()})


def keras_state(model) -> KerasWeights:
    """A Keras model's variables by path, as numpy arrays."""
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def load_keras_state(model, variables: Mapping[str, np.ndarray], origin: str) -> None:
    """Assign Keras variables by path after checking that every one is given, with its shape."""
    expected = {v.path: tuple(v.shape) for v in model.weights}
    _same_names(variables, expected, origin)
    _same_shapes(variables, expected, origin)
    for v in model.weights:
        v.assign(variables[v.path])


def weights_hash(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_weights(path: str | Path, weights: Mapping[str, np.ndarray],
                 metadata: Mapping[str, str]) -> Path:
    """Write torch-layout weights to a safetensors file, atomically."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp),
                  metadata=dict(metadata))
    return Path(path)


def read_weights(path: str | Path) -> tuple[Weights, dict[str, str]]:
    """Read a safetensors file written by save_weights: (weights, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise OnnxtwinError(f"weights file: expected an existing safetensors file, got {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except Exception as e:  # safetensors raises several types for corrupt files
        raise OnnxtwinError(f"weights file {path}: expected a safetensors file, "
                            f"got unreadable data ({type(e).__name__}: {e})") from None
