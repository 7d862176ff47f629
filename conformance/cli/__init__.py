"""The `onnxtwin` command line: one module per command group.

    core.py     the typer app, consoles, shared options, `main` (the console script)
    models.py   models, build, export
    check.py    check, train
    bench.py    bench
    runtime.py  providers, run, serve, deploy (onnxruntime only)

Commands call library functions and print their results; torch and TensorFlow are
imported inside commands, so `onnxtwin --help`, `run` and `serve` load neither.
"""

from importlib import import_module

from onnxtwin.conformance.cli.core import app, main

for _group in ("models", "check", "bench", "runtime"):  # registers the commands, in help order
    import_module(f"{__name__}.{_group}")

__all__ = ["app", "main"]
