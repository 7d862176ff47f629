"""pytest plugin (entry point `pytest11`): parity assertions as fixtures, one ini tolerance.

    def test_my_port(assert_twins_agree):
        assert_twins_agree(my_torch_model, my_keras_model, {"x": x})

    def test_my_export(assert_onnx_matches):
        assert_onnx_matches("model.onnx", my_torch_model, {"x": x})

`onnxtwin_tolerance` in the ini file sets the default max abs tolerance (1e-5).
Heavy imports happen only when a fixture is used.
"""

from __future__ import annotations

import functools

import pytest

INI_TOLERANCE = "onnxtwin_tolerance"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI_TOLERANCE, "default max abs tolerance of onnxtwin parity fixtures",
                  default="1e-5")


def _tolerance(config: pytest.Config) -> float:
    return float(config.getini(INI_TOLERANCE))


@pytest.fixture
def assert_twins_agree(request: pytest.FixtureRequest):
    """assert_twins_agree(torch_model, keras_model, inputs, *, tolerance=ini, oracle=True)."""
    from onnxtwin.conformance import parity

    return functools.partial(parity.assert_twins_agree, tolerance=_tolerance(request.config))


@pytest.fixture
def assert_onnx_matches(request: pytest.FixtureRequest):
    """assert_onnx_matches(path, reference, inputs, *, tolerance=ini, provider="cpu")."""
    from onnxtwin.conformance import parity

    return functools.partial(parity.assert_onnx_matches, tolerance=_tolerance(request.config))
