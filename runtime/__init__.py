"""onnxruntime sessions for deployment; imports neither torch nor TensorFlow."""

from onnxtwin.runtime.errors import OnnxtwinError

__all__ = ["OnnxtwinError"]
