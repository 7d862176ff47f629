"""The one exception type for errors a user can cause.

It lives in the runtime, the package every other one may import, because the
runtime must stay free of torch and TensorFlow and still share the error type.
"""


class OnnxtwinError(Exception):
    """A user error: the message says what was expected and what was given, on one line."""


class ResourceLimit(OnnxtwinError):
    """A run would need more memory than its bound allows (HTTP 413 when serving)."""


def first_line(error: Exception) -> str:
    """The first non-empty line of a library's error message (onnxruntime's, onnx's)."""
    lines = [s.strip() for s in str(error).splitlines() if s.strip()]
    return lines[0] if lines else type(error).__name__
