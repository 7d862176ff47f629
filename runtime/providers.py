"""Which onnxruntime execution providers really work here, proven by creating a session.

onnxruntime-gpu lists CUDA and TensorRT in get_available_providers() on machines with
no GPU or no CUDA libraries; a session asked for them logs an error and silently runs
on CPU. So a provider counts as usable only if a session created with it reports it
in get_providers().
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from onnxtwin.runtime.errors import OnnxtwinError

ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
           "tensorrt": "TensorrtExecutionProvider"}


class ProviderFallbackWarning(UserWarning):
    """A requested provider could not run, and the session runs on CPU instead."""


@dataclass(frozen=True)
class ProviderStatus:
    """One execution provider: listed by this onnxruntime build, and usable (with why not)."""

    alias: str
    name: str
    listed: bool
    usable: bool
    reason: str


def provider_name(alias: str) -> str:
    """'cpu' -> 'CPUExecutionProvider'; an unknown alias is a one-line error."""
    try:
        return ALIASES[alias.lower()]
    except KeyError:
        raise OnnxtwinError(f"provider: expected one of {sorted(ALIASES)}, got {alias!r}") \
            from None


def providers() -> list[ProviderStatus]:
    """The status of every provider onnxtwin knows, CPU first."""
    return [probe(alias) for alias in ALIASES]


def usable_aliases() -> list[str]:
    """Aliases of the providers that ran a probe session here, CPU first."""
    return [s.alias for s in providers() if s.usable]


_probe_lock = threading.Lock()


@functools.cache
def probe(alias: str) -> ProviderStatus:
    """Create a one-node session on the provider and see whether it really ran there."""
    import onnxruntime as ort

    name = provider_name(alias)
    if name not in ort.get_available_providers():
        return ProviderStatus(alias, name, False, False,
                              f"not in this onnxruntime build ({_package()}); "
                              "onnxruntime-gpu has CUDA and TensorRT")
    if name != "CPUExecutionProvider":
        preload_cuda_libraries()
    with _probe_lock, _captured_native_output() as log:
        try:
            ran = ort.InferenceSession(_IDENTITY_MODEL, providers=[name]).get_providers()
        except Exception as e:  # onnxruntime raises its own pybind types
            ran, log = [], [str(e)]
    if ran and ran[0] == name:
        return ProviderStatus(alias, name, True, True, "a session ran on it")
    return ProviderStatus(alias, name, True, False, _fallback_reason("".join(log)))


def resolve(alias: str, strict: bool) -> list[str]:
    """The provider list for a session: the requested one, or CPU with a warning (or refused)."""
    status = probe(alias)
    if status.usable:
        return [status.name] if status.name == "CPUExecutionProvider" else \
            [status.name, "CPUExecutionProvider"]
    refuse_or_warn(alias, status.reason, strict)
    return ["CPUExecutionProvider"]


def refuse_or_warn(alias: str, reason: str, strict: bool) -> None:
    """Strict: raise. Otherwise: warn that the session falls back to CPU."""
    message = f"provider {alias!r}: expected it to run here, got: {reason}"
    if strict:
        raise OnnxtwinError(message)
    warnings.warn(f"{message}; running on CPU instead", ProviderFallbackWarning, stacklevel=3)


def preload_cuda_libraries() -> bool:
    """Load the NVIDIA CUDA/cuDNN wheels' libraries for onnxruntime, where they are installed."""
    import onnxruntime as ort

    if importlib.util.find_spec("nvidia") is None or not hasattr(ort, "preload_dlls"):
        return False
    with _captured_native_output():
        ort.preload_dlls()
    return True


def _package() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for package in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            continue
    return "onnxruntime"


# onnx.helper.make_model(Identity x -> y, float[1], opset 18) with ir_version 10, serialized
# here so the runtime needs no onnx package.
_IDENTITY_MODEL = bytes.fromhex(
    "080a12086f6e6e787477696e3a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178"
    "120a0a08080112040a020801620f0a0179120a0a08080112040a02080142040a001012")


@contextlib.contextmanager
def _captured_native_output() -> Iterator[list[str]]:
    """Capture onnxruntime's C++ log (fd 2) and Python prints; the text is appended on exit."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(io.StringIO()) as printed:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace") + printed.getvalue())


def _fallback_reason(log: str) -> str:
    """The cause onnxruntime logged when it dropped the provider, in one line."""
    log = _ANSI_COLOUR.sub("", log)
    found = re.search(r"with error: (.+)", log)
    failed = [line for line in log.splitlines() if "Fail" in line or "Error" in line]
    cause = found.group(1) if found else failed[0] if failed else "no message"
    return f"onnxruntime fell back to CPU: {cause.strip()}"


_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")

