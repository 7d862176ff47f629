"""The one exception type for errors a user can cause.

It lives in the runtime, the package every other one may import, because the
runtime must stay free of torch and TensorFlow and still share the error type.
"""


class OnnxtwinError(Exception):
    """A user error: the message says what was expected and what was given, on one line."""
