"""Torch twin -> ONNX ModelProto with torch.onnx.export (the dynamo exporter)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch

from onnxtwin.builders import Twins, grids, sample_inputs


@contextlib.contextmanager
def rnn_while_loop_decompositions() -> Iterator[None]:
    """Export nn.LSTM / nn.GRU through torch's while-loop decompositions.

    Workaround for torch 2.13 (pytorch#191855): with dynamo=True the default RNN
    export keeps the example's sequence length in a Reshape, so any other length fails
    at run time. These decompositions (private API, torch.export._patches) give a
    graph that runs at every length and still uses the native ONNX LSTM/GRU ops.
    """
    from torch.export._patches import (
        register_gru_while_loop_decomposition,
        register_lstm_while_loop_decomposition,
    )

    with register_lstm_while_loop_decomposition(), register_gru_while_loop_decomposition():
        yield


def export_torch(twins: Twins, opset: int) -> onnx.ModelProto:
    """Trace the torch twin at the example shape (spec.example_dims()) with every named dim
    dynamic; the gate then runs other sizes."""
    spec = twins.spec
    example = sample_inputs(spec, spec.example_dims(), seed=grids.EXAMPLE_SEED)
    args = tuple(torch.from_numpy(example[t.name]) for t in spec.signature.inputs)
    # Positional, not by name: the forward's own argument names (nn.Sequential's `input`)
    # need not be the signature's.
    dynamic = tuple({i: torch.export.Dim.DYNAMIC for i, d in enumerate(t.shape)
                     if isinstance(d, str)} for t in spec.signature.inputs)
    # torch 2.13 logs a warning per missing torchvision op on every export; we export no vision op.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), rnn_while_loop_decompositions():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecation notices
        warnings.filterwarnings("ignore", "The tensor attributes .* were assigned during export")
        program = torch.onnx.export(
            twins.torch_model, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
            input_names=[t.name for t in spec.signature.inputs],
            output_names=[t.name for t in spec.signature.outputs], verbose=False)
    return program.model_proto
