"""metadata_props stamped on every exported file: what it is and what made it.

This module owns the keys: code that writes or reads a stamp names them from here. The
signature key is defined by the runtime (a deployment reads it without onnxtwin.export).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

import onnx

from onnxtwin.runtime.session import SIGNATURE_KEY

FAMILY = "onnxtwin.family"
VARIANT = "onnxtwin.variant"
FRAMEWORK = "onnxtwin.framework"
SPEC_HASH = "onnxtwin.spec_hash"
WEIGHTS_HASH = "onnxtwin.weights_hash"
OPSET = "onnxtwin.opset"
HYPERPARAMETERS = "onnxtwin.hyperparameters"
SIGNATURE = SIGNATURE_KEY
PRECISION = "onnxtwin.precision"
"""fp16 or int8 on a reduced file (absent on a float32 export)."""
PRECISION_METHOD = "onnxtwin.precision_method"
VERSION_PREFIX = "onnxtwin.version."

TOOLS = ("onnxtwin", "torch", "tensorflow-cpu", "tf2onnx", "onnx", "onnxscript")


def tool_versions(tools: tuple[str, ...] = TOOLS) -> dict[str, str]:
    """Installed versions of `tools` (default: those an export depends on); "absent" if not."""
    found = {}
    for tool in tools:
        try:
            found[tool] = version(tool)
        except PackageNotFoundError:
            found[tool] = "absent"
    return found


def export_props(spec, framework: str, weights_hash: str, opset: int) -> dict[str, str]:
    """The stamp of one export: the spec, the twin, its weights, the opset and tool versions."""
    return {FAMILY: spec.family, VARIANT: spec.name, FRAMEWORK: framework,
            SPEC_HASH: spec.spec_hash, WEIGHTS_HASH: weights_hash, OPSET: str(opset),
            HYPERPARAMETERS: json.dumps(spec.hyperparameters(), sort_keys=True),
            SIGNATURE: json.dumps(asdict(spec.signature)),
            **{VERSION_PREFIX + k: v for k, v in tool_versions().items()}}


def stamp(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Replace the model's metadata_props with `props` (sorted by key)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(sorted(props.items())))
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
