"""Twin -> ONNX export with the spec's shared signature (not implemented yet: issue 3)."""
