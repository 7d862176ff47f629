"""Serving ONNX exports: the Open Inference Protocol v2 codec (`oip`), dynamic batching
(`batching`), the HTTP server of `onnxtwin serve` (`server`) and the Triton model
repository writer of `onnxtwin deploy` (`triton`).

Like the rest of onnxtwin.runtime it imports neither torch nor TensorFlow: a deployment
needs only onnxruntime, onnx, numpy and, for the server, Starlette and uvicorn. Import from the
submodules; this package imports nothing.
"""
