"""Cross-checks between every path a twin pair can take, and the `onnxtwin` CLI."""
