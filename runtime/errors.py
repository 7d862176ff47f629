"""The one exception type for errors a user can cause, and how a library's error is said
in one line.

It lives in the runtime, the package every other one may import, because the
runtime must stay free of torch and TensorFlow and still share the error type.
"""

import contextlib
import re
from collections.abc import Iterator


class OnnxtwinError(Exception):
    """A user error: the message says what was expected and what was given, on one line."""


class ResourceLimit(OnnxtwinError):
    """A run would need more memory than its bound allows (HTTP 413 when serving)."""


def first_line(error: Exception) -> str:
    """The first non-empty line of a library's error message (onnxruntime's, onnx's)."""
    lines = [s.strip() for s in str(error).splitlines() if s.strip()]
    return lines[0] if lines else type(error).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WRAPPERS = ("Exception encountered when calling",)
"""First lines that only say where an error happened (Keras wraps a layer's error so)."""


def cause(error: BaseException, limit: int = 400) -> str:
    """A framework error in one line: its first line, with the next one when the first only
    says where (Keras' "Exception encountered when calling Sequential.call()." or a line
    ending in a colon), terminal colours removed, at most `limit` characters."""
    lines = [_ANSI.sub("", s).strip() for s in str(error).splitlines()]
    lines = [s for s in lines if s]
    if not lines:
        return ""
    text = lines[0]
    if len(lines) > 1 and (text.startswith(_WRAPPERS) or text.endswith(":")):
        text = f"{text} {lines[1]}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def failures(expected: str) -> Iterator[None]:
    """A library's exception raised in the block as one line: "`expected`, got TYPE: the
    first line of its message" (OnnxtwinError passes through). For the tools that raise
    plain exceptions of many kinds (onnxruntime's quantizer and float16 converter)."""
    try:
        yield
    except OnnxtwinError:
        raise
    except Exception as e:  # any library failure: its type and the line that says why
        raise OnnxtwinError(f"{expected}, got {type(e).__name__}: {first_line(e)}") from None

