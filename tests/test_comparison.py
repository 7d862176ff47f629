"""The comparison engine on hand-made paths whose differences are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from onnxtwin.runtime.comparison import Case, Check, Comparisons, compare_paths, tolerance_for
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.metrics import Comparison
from onnxtwin.runtime.paths import FunctionPath, PathInfo

OUTPUTS = ("logits", "embedding")


def two_heads(name: str, logits_shift: float = 0.0, embedding_shift: float = 0.0,
              embedding_shape: tuple[int, ...] | None = None) -> FunctionPath:
    """x -> (x @ 2 + logits_shift, x[:, :2] + embedding_shift)."""
    def fn(x):
        embedding = x[:, :2] + embedding_shift
        if embedding_shape is not None:
            embedding = np.zeros(embedding_shape)
        return 2 * x + logits_shift, embedding
    return FunctionPath(PathInfo(name, "python"), fn, ["x"], OUTPUTS)


def cases(batches=(1, 3)) -> list[Case]:
    rng = np.random.default_rng(0)
    return [Case({"batch": b}, {"x": rng.random((b, 4))}) for b in batches]


def test_every_output_of_every_pair_at_every_case_is_compared():
    paths = [two_heads("a"), two_heads("b", embedding_shift=0.25), two_heads("c")]
    result = compare_paths(paths, two_heads("ref"), cases(), {"": 1e-6})
    # 3 paths vs the reference + 3 pairs, 2 outputs, 2 cases
    assert len(result.checks) == (3 + 3) * 2 * 2
    failed = {(c.actual, c.expected, c.output) for c in result.failed}
    assert failed == {("b", "ref", "embedding"), ("a", "b", "embedding"),
                      ("b", "c", "embedding")}
    assert result.worst("b", "ref") == pytest.approx(0.25)
    assert result.worst("a", "ref") == 0.0
    assert result.needed() == {"logits": 0.0, "embedding": pytest.approx(0.25)}
    assert not result.passed


def test_reference_pairs_only_and_per_output_tolerances():
    paths = [two_heads("a", logits_shift=1e-4, embedding_shift=1e-3)]
    result = compare_paths(paths, two_heads("ref"), cases(), {"logits": 2e-4, "": 2e-3},
                           pairs="reference")
    assert {(c.actual, c.expected) for c in result.checks} == {("a", "ref")}
    assert {c.output: c.tolerance for c in result.checks} == {"logits": 2e-4,
                                                               "embedding": 2e-3}
    assert result.passed
    strict = compare_paths(paths, two_heads("ref"), cases(), {"logits": 2e-4, "": 5e-4})
    assert [c.output for c in strict.failed] == ["embedding", "embedding"]


def test_a_shape_mismatch_is_an_infinite_error_with_the_shapes_said():
    result = compare_paths([two_heads("a", embedding_shape=(1, 3))], two_heads("ref"),
                           cases((1,)), 1e-5)
    bad = result.failed
    assert len(bad) == 1 and bad[0].output == "embedding"
    assert bad[0].metrics.max_abs == float("inf") and bad[0].detail == "shape (1, 3) vs (1, 2)"


def test_fail_fast_stops_at_the_first_failing_case_and_outputs_can_be_kept():
    result = compare_paths([two_heads("a", logits_shift=1.0)], two_heads("ref"), cases((1, 3, 5)),
                           1e-5, fail_fast=True, keep_outputs=True)
    assert {c.dims["batch"] for c in result.checks} == {1}
    assert len(result.outputs["a"]) == len(result.outputs["ref"]) == 1
    np.testing.assert_array_equal(result.outputs["a"][0]["logits"] - 1.0,
                                  result.outputs["ref"][0]["logits"])


def test_a_path_that_cannot_run_is_named_with_its_case():
    def broken(x):
        raise OnnxtwinError("input 'x': expected float32, got float64")
    path = FunctionPath(PathInfo("broken", "python"), broken, ["x"], ["y"])
    with pytest.raises(OnnxtwinError, match=r"^broken at batch 3: input 'x': expected float32"):
        compare_paths([path], None, cases((3,)), 1e-5)


def test_wrong_input_names_and_output_counts_are_refused():
    with pytest.raises(OnnxtwinError, match=r"path 'a': expected inputs \['x'\], got \['y'\]"):
        two_heads("a").run({"y": np.zeros((1, 4))})
    one = FunctionPath(PathInfo("one", "python"), lambda x: x, ["x"], OUTPUTS)
    with pytest.raises(OnnxtwinError, match=r"path 'one': expected 2 outputs .* gave 1"):
        one.run({"x": np.zeros((1, 4))})
    unnamed = FunctionPath(PathInfo("u", "python"), lambda x: (x, x), ["x"], ())
    assert list(unnamed.run({"x": np.zeros((1, 4))})) == ["output_0", "output_1"]
    with pytest.raises(OnnxtwinError, match="distinct path names"):
        compare_paths([two_heads("a"), two_heads("a")], None, cases(), 1e-5)


def test_needed_is_the_largest_error_per_output_and_infinite_with_nan():
    def check(output, max_abs, nonfinite=0):
        return Check("a", "b", output, {"batch": 1}, Comparison(max_abs, 0.0, 1.0, nonfinite),
                     1e-5)
    result = Comparisons("b", (check("p", 3e-7), check("p", 2e-6), check("q", 1e-9, 1)))
    assert result.needed() == {"p": 2e-6, "q": float("inf")}
    assert tolerance_for({"p": 1e-3, "": 1e-5}, "q") == 1e-5
    with pytest.raises(OnnxtwinError, match="expected an entry or a default"):
        tolerance_for({"p": 1e-3}, "q")


def test_a_multi_output_torch_and_keras_pair_is_compared_on_both_heads(assert_twins_agree):
    """The pytest assertion compares every output; a wrong second head is caught and named."""
    import torch

    from onnxtwin.builders.keras_support import keras

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x), torch.tanh(x)

    torch.manual_seed(0)
    model = Heads().eval()
    x = keras.Input((4,))
    dense = keras.layers.Dense(3)
    keras_model = keras.Model(x, [dense(x), keras.ops.tanh(x)])
    dense.set_weights([model.fc.weight.detach().numpy().T, model.fc.bias.detach().numpy()])
    inputs = {"x": np.random.default_rng(1).random((5, 4), dtype=np.float32)}
    assert_twins_agree(model, keras_model, inputs)
    wrong = keras.Model(x, [dense(x), keras.ops.tanh(x) * 1.01])
    with pytest.raises(AssertionError, match=r"torch vs keras \[output_1\]: max abs .*FAIL"):
        assert_twins_agree(model, wrong, inputs)


def test_outputs_by_name_are_looked_up_and_framework_errors_are_one_line():
    swapped = FunctionPath(PathInfo("swapped", "python"),
                           lambda x: {"embedding": x[:, :2], "logits": 2 * x}, ["x"], OUTPUTS)
    result = compare_paths([swapped], two_heads("ref"), cases(), 1e-9)
    assert result.passed and len(result.checks) == 4  # by name, not by position
    raising = FunctionPath(PathInfo("torchy", "python"),
                           lambda x: (_ for _ in ()).throw(RuntimeError("size mismatch\nmore")),
                           ["x"], ["y"])
    with pytest.raises(OnnxtwinError, match=r"^torchy at batch 1: path 'torchy': expected the "
                                            r"model to run, got RuntimeError: size mismatch$"):
        compare_paths([raising], None, cases((1,)), 1e-5)
    other = FunctionPath(PathInfo("other", "python"), lambda x: x, ["x"], ["z"])
    with pytest.raises(OnnxtwinError, match="expected every path to have the same outputs"):
        compare_paths([other], two_heads("ref"), cases(), 1e-5)


def test_a_grid_without_a_signature_dim_is_a_one_line_error():
    from onnxtwin.builders import grids

    assert grids.combinations({"batch": (1, 2), "seq": (3,)}, ["batch"]) == [{"batch": 1},
                                                                              {"batch": 2}]
    with pytest.raises(OnnxtwinError, match=r"got none for \['height'\]$"):
        grids.combinations({"batch": (1,)}, ["batch", "height"])
