"""The benchmark: `run` races every path of a model interleaved (torch, torch.compile, Keras,
onnxruntime default, tuned and offline-optimised), `report` renders bench.json as
Markdown and HTML, `device` times torch and onnxruntime on a GPU (no TensorFlow needed).
"""
