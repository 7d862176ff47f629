"""The built-in families, one file each; importing a family registers it and its variants."""

from onnxtwin.builders.families import cnn, rnn, transformer, textcnn  # noqa: I001 (in order)

__all__ = ["cnn", "rnn", "textcnn", "transformer"]
