"""onnxruntime sessions for deployment; imports neither torch nor TensorFlow.

    from onnxtwin.runtime import Session, measure
    session = Session("out/gru.torch.onnx", provider="cuda")   # falls back to CPU, warns
    logits = session.run({"tokens": tokens})["logits"]
    session.providers                                          # what really ran
    measure(lambda: session.run({"tokens": tokens}), batch=len(tokens)).p50_ms
"""

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE, Comparison, compare
from onnxtwin.runtime.providers import (
    ProviderFallbackWarning,
    ProviderStatus,
    probe,
    providers,
    usable_aliases,
)
from onnxtwin.runtime.session import Session, TensorInfo
from onnxtwin.runtime.timing import Timing, measure
from onnxtwin.runtime.tokenizer import Tokenizer

__all__ = ["FLOAT32_ABS_TOLERANCE", "Comparison", "OnnxtwinError", "ProviderFallbackWarning",
           "ProviderStatus", "Session", "TensorInfo", "Timing", "Tokenizer", "compare", "measure",
           "probe", "providers", "usable_aliases"]
