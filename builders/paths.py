"""The framework paths: a torch module, a Keras model, a Keras tf.function, the float64 oracle.

Each is a `ModelPath` (onnxtwin.runtime.paths): {input name: array} in, {output name:
array} out, so the comparison engine treats them exactly like an ONNX file on a provider.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from onnxtwin.runtime.paths import ModelPath, PathInfo

ORACLE = "oracle"


class TorchPath(ModelPath):
    """A torch module in inference mode; float inputs cast to `dtype`, on `device`."""

    def __init__(self, module: torch.nn.Module, inputs: Sequence[str], outputs: Sequence[str],
                 name: str = "torch", dtype: torch.dtype = torch.float32,
                 device: str = "cpu") -> None:
        super().__init__(PathInfo(name, "torch", None, None, str(dtype).removeprefix("torch.")),
                         inputs, outputs)
        self.module, self.dtype, self.device = module.eval(), dtype, device

    def _run(self, args: list[np.ndarray]):
        return run_module(self.module, args, self.dtype, self.device)


class KerasPath(ModelPath):
    """A Keras model called eagerly (a list of inputs when it has several). An input flagged
    in `channels_last` is given channels-first and moved (axis 1 last) for the model."""

    def __init__(self, model, inputs: Sequence[str], outputs: Sequence[str],
                 name: str = "keras", channels_last: Sequence[bool] = ()) -> None:
        super().__init__(PathInfo(name, "keras"), inputs, outputs)
        self.model = model
        self.channels_last = tuple(channels_last) or (False,) * len(self.input_names)

    def _run(self, args: list[np.ndarray]):
        args = keras_layout(args, self.channels_last)
        result = self.model(args[0] if len(args) == 1 else args, training=False)
        return _outputs(result, np.asarray)


def keras_layout(args: Sequence[np.ndarray], channels_last: Sequence[bool]) -> list:
    """Inputs as the Keras model takes them: each flagged one with axis 1 moved last."""
    return [np.moveaxis(a, 1, -1) if moved else a
            for a, moved in zip(args, channels_last, strict=True)]


class KerasFunctionPath(ModelPath):
    """A Keras model through a tf.function returning {output name: tensor}: how Keras deploys."""

    def __init__(self, function, inputs: Sequence[str], outputs: Sequence[str],
                 name: str = "keras") -> None:
        super().__init__(PathInfo(name, "keras"), inputs, outputs)
        self.function = function

    def _run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        result = self.function(*args)
        return [result[n].numpy() for n in self.output_names]


def oracle_path(module: torch.nn.Module, inputs: Sequence[str], outputs: Sequence[str],
                jitter: int | None = None) -> TorchPath:
    """The module run in float64 on a copy of its float32 weights: the reference.

    With `jitter` (a seed), every weight is first moved by a random relative amount of at
    most 2**-24, float32's rounding error: how far that moves the output measures how
    sensitive an input is to float32 rounding.
    """
    model = copy.deepcopy(module).double()
    if jitter is not None:
        generator = torch.Generator().manual_seed(jitter)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + (2 * torch.rand(p.shape, generator=generator,
                                           dtype=torch.float64) - 1) * 2.0 ** -24)
    name = ORACLE if jitter is None else f"{ORACLE} jittered"
    return TorchPath(model, inputs, outputs, name, torch.float64)


def run_module(model: torch.nn.Module, args: Sequence[np.ndarray], dtype: torch.dtype,
               device: str = "cpu") -> list[np.ndarray] | dict[str, np.ndarray]:
    """Run a torch module (on `device`) in inference mode on numpy arrays; float inputs
    cast to `dtype`, except float64 ones (a model declared to take float64 gets it on
    every path); every output comes back as it was computed."""
    def tensor(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t

    with torch.inference_mode():
        result = model(*(tensor(a) for a in args))
    return _outputs(result, lambda t: t.cpu().numpy())


def _outputs(result, to_numpy):
    """A model's result as numpy outputs: a dict stays by name (ModelPath.run picks the
    declared names), a tuple or list in order, one tensor as one output."""
    if isinstance(result, dict):
        return {k: to_numpy(v) for k, v in result.items()}
    return [to_numpy(r) for r in (result if isinstance(result, list | tuple) else [result])]
