"""Shared fixtures: twins are built once per session (building a Keras model costs ~0.5 s)."""

from __future__ import annotations

import os
import tempfile

import pytest

from onnxtwin.builders import build_twins, registry

pytest_plugins = ["pytester"]  # tests of onnxtwin's own pytest plugin


@pytest.fixture(scope="session", autouse=True)
def export_cache():
    """A fresh export cache for the session, so no test reads a user's cache."""
    with tempfile.TemporaryDirectory(prefix="onnxtwin-cache-") as folder:
        os.environ["ONNXTWIN_CACHE"] = folder
        yield folder


@pytest.fixture(scope="session")
def twins_of():
    """twins_of(name, source="torch", seed=0): cached Twins (do not change their weights)."""
    cache = {}

    def get(name: str, source: str = "torch", seed: int = 0):
        key = (name, source, seed)
        if key not in cache:
            cache[key] = build_twins(name, seed=seed, source=source)
        return cache[key]

    return get


@pytest.fixture
def clean_registry():
    """Restore the registry's variants after a test that registers its own."""
    saved = dict(registry._variants)
    yield registry
    registry._variants.clear()
    registry._variants.update(saved)
