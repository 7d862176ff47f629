"""metadata_props stamped on every exported file: what it is and what made it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import onnx

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


def stamp(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Replace the model's metadata_props with `props` (sorted by key)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(sorted(props.items())))
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
