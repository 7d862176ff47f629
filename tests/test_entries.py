"""User entries in a spec file: a user's own torch or Keras model (one framework), checked
end to end, and every refusal of a bad entry in one line, before anything is written.

The models are written here, in a file the spec names, as a user would write them.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from cli_runner import onnxtwin

from onnxtwin.builders import build_twins, sample_inputs
from onnxtwin.builders.registry import toml_specs
from onnxtwin.runtime.errors import OnnxtwinError

MODELS = textwrap.dedent('''
    import torch


    class Residual(torch.nn.Module):
        """A custom forward: embedding, LayerNorm, GELU and a residual add, per token."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(40, 12)
            self.norm = torch.nn.LayerNorm(12)
            self.mix = torch.nn.Linear(12, 12)
            self.head = torch.nn.Linear(12, 3)

        def forward(self, tokens):
            h = self.embed(tokens)
            h = h + torch.nn.functional.gelu(self.mix(self.norm(h)))
            return self.head(h)


    def residual():
        return Residual()


    def residual_keras():
        import keras

        tokens = keras.Input((None,), dtype="int64")
        h = keras.layers.Embedding(40, 12)(tokens)
        mixed = keras.layers.Dense(12, activation="gelu")(
            keras.layers.LayerNormalization(epsilon=1e-5)(h))
        return keras.Model(tokens, keras.layers.Dense(3)(keras.layers.Add()([h, mixed])))


    def two_inputs():
        import keras

        x = keras.Input((4,))
        ids = keras.Input((3,), dtype="int64")
        e = keras.layers.Flatten()(keras.layers.Embedding(20, 2)(ids))
        h = keras.layers.Concatenate()([keras.layers.Dense(6, activation="tanh")(x), e])
        return keras.Model([x, ids], [keras.layers.Dense(2)(h), keras.layers.Dense(1)(h)])


    def conv_needs_three():
        return torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Flatten())


    def raises():
        raise ValueError("no GPU here")


    def not_a_model():
        return 42
''')

RESIDUAL = '''
[models.residual]
torch = "my_models.py:residual"
inputs = [{ name = "tokens", dtype = "int64", shape = ["batch", "seq"], range = [0, 40] }]
outputs = ["scores"]
dims = { batch = [1, 4], seq = [1, 9, 33] }
'''
TWO_INPUTS = '''
[models.two-inputs]
keras = "my_models.py:two_inputs"
inputs = [{ name = "x", dtype = "float32", shape = ["batch", 4] },
          { name = "ids", dtype = "int64", shape = ["batch", 3], range = [0, 20] }]
outputs = ["scores", "value"]
dims = { batch = [1, 5] }
'''


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "my_models.py").write_text(MODELS)
    return tmp_path


def specs(folder, text: str):
    import tomllib

    return toml_specs(tomllib.loads(text), folder / "spec.toml")


def test_torch_entry_alone_matches_its_float64_run_and_infers_its_outputs(folder):
    spec, = specs(folder, RESIDUAL)
    assert spec.frameworks == ("torch",)
    out, = spec.signature.outputs
    assert (out.name, out.dtype, out.shape) == ("scores", "float32", ("batch", "seq", 3))
    twins = build_twins(spec)
    x = sample_inputs(spec, batch=4, seq=33, seed=3)
    assert x["tokens"].min() >= 0 and x["tokens"].max() < 40
    import torch

    with torch.no_grad():  # the expectation: the same module in float64, by hand
        expected = twins.torch_model.double()(torch.from_numpy(x["tokens"])).numpy()
    twins.torch_model.float()
    got = twins.torch.run(x)["scores"]
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(twins.oracle().run(x)["scores"] - expected).max() < 1e-12


def test_keras_entry_with_two_inputs_and_two_outputs(folder):
    spec, = specs(folder, TWO_INPUTS)
    assert spec.signature.output_names == ("scores", "value")
    twins = build_twins(spec)
    x = sample_inputs(spec, batch=5, seed=2)
    oracle = twins.oracle().run(x)
    got = twins.keras.run(x)
    assert oracle["scores"].dtype == np.float64
    for name in ("scores", "value"):
        assert got[name].shape == oracle[name].shape
        assert 0 < np.abs(got[name] - oracle[name]).max() < 1e-6


def test_check_exports_gates_and_compares_both_single_framework_entries(folder):
    (folder / "spec.toml").write_text(RESIDUAL + TWO_INPUTS)
    out = folder / "report"
    result = onnxtwin("check", "--spec", str(folder / "spec.toml"), "-m", "residual",
                      "-m", "two-inputs", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    models = {m["name"]: m for m in report["models"]}
    residual, two = models["residual"], models["two-inputs"]
    assert [e["framework"] for e in residual["exports"]] == ["torch"]
    assert [e["framework"] for e in two["exports"]] == ["keras"]
    # every point of the declared grid, every path against the float64 run, each output
    assert {(c["batch"], c["seq"]) for c in residual["comparisons"]} == {
        (b, s) for b in (1, 4) for s in (1, 9, 33)}
    assert {c["output"] for c in two["comparisons"]} == {"scores", "value"}
    for m in (residual, two):
        against_oracle = [c for c in m["comparisons"] if c["expected"] == "oracle"]
        assert against_oracle and all(c["max_abs"] < 1e-5 for c in against_oracle)
        assert all(g["max_abs"] < 1e-5 for e in m["exports"] for g in e["gate"])
    # the gate runs at the grid's points other than the export example (batch 3, seq 5)
    assert {(g["batch"], g["seq"]) for g in residual["exports"][0]["gate"]} == {
        (b, s) for b in (1, 4) for s in (1, 9, 33)}
    assert (out / "residual.torch.onnx").is_file() and (out / "two-inputs.keras.onnx").is_file()


ENTRY = '''
[models.bad]
{}
inputs = [{{ name = "x", dtype = "float32", shape = ["batch", 2, "seq"] }}]
dims = {{ batch = [1, 2], seq = [1, 5] }}
'''


@pytest.mark.parametrize(("factory", "message"), [
    ('torch = "missing.py:f"', "model 'bad': expected torch to name an existing file"),
    ('torch = "my_models.py:nothing"', "expected the torch factory my_models.py:nothing to "
                                       "import a callable 'nothing', got 'nothing by that"),
    ('torch = "no_such_package.models:f"', "expected the torch factory "
                                           "no_such_package.models:f to import, got "
                                           "ModuleNotFoundError: No module named"),
    ('torch = "my_models.py"', "expected torch as FILE.py:CALLABLE or package.module:CALLABLE"),
    ('torch = "my_models.py:raises"', "expected the torch factory my_models.py:raises to "
                                      "return a torch.nn.Module, got ValueError: no GPU here"),
    ('torch = "my_models.py:not_a_model"', "return a torch.nn.Module, got 'int'"),
    ('keras = "my_models.py:residual"', "expected the keras factory my_models.py:residual to "
                                        "return a keras.Model, got 'Residual'"),
    ('torch = "my_models.py:conv_needs_three"',
     "model 'bad': expected the torch model to take the declared inputs at {'batch': 1, "
     "'seq': 1}, got: path 'torch': expected the model to run, got RuntimeError"),
])
def test_a_factory_that_cannot_make_the_model_is_one_line(folder, factory, message):
    with pytest.raises(OnnxtwinError) as e:
        build_twins(specs(folder, ENTRY.format(factory))[0])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_syntax_error_in_the_factory_file_is_one_line(folder):
    (folder / "broken.py").write_text("def f(:\n")
    with pytest.raises(OnnxtwinError, match=r"expected the torch factory broken.py:f to import, "
                                            r"got SyntaxError: invalid syntax"):
        specs(folder, ENTRY.format('torch = "broken.py:f"'))


@pytest.mark.parametrize(("table", "message"), [
    ('torch = "my_models.py:residual"\n',
     "expected inputs as a non-empty list of {name, dtype, shape} tables, got None"),
    ('torch = "my_models.py:residual"\ninputs = [{ name = "x", dtype = "float33", '
     'shape = ["batch"] }]\n', "expected inputs[0].dtype one of"),
    ('torch = "my_models.py:residual"\ninputs = [{ name = "x", dtype = "int64", '
     'shape = ["batch"], range = [5, 1] }]\n', "expected inputs[0].range as [low, high) with "
                                                "low < high (ints), got [5, 1]"),
    ('torch = "my_models.py:residual"\ninputs = [{ name = "x", dtype = "float32", '
     'shape = [] }]\n', "expected inputs[0].shape as 1 to 8 sizes"),
    ('torch = "my_models.py:residual"\ninputs = [{ name = "x", dtype = "float32", '
     'shape = ["batch"] }]\ndims = { time = [3] }\n',
     "expected dims naming only the signature's dims ['batch'], got ['time']"),
    ('torch = "my_models.py:residual"\nsource = "keras"\ninputs = [{ name = "x", dtype = '
     '"float32", shape = ["batch"] }]\n', "expected source to be one of the entry's "
                                          "factories ['torch'], got 'keras'"),
    ('torch = "my_models.py:residual"\nlayers = 3\n', "expected keys among"),
    ('torch = "my_models.py:residual"\nweights = "w.safetensors"\ninputs = [{ name = "x", '
     'dtype = "float32", shape = ["batch"] }]\n', "expected weights to name an existing file"),
])
def test_a_malformed_entry_is_one_line_naming_it(folder, table, message):
    with pytest.raises(OnnxtwinError) as e:
        specs(folder, f"[models.bad]\n{table}")
    assert "model 'bad'" in str(e.value) and message in str(e.value)


def test_weights_of_the_wrong_shape_are_refused_naming_the_tensor(folder):
    from safetensors.numpy import save_file

    spec, = specs(folder, RESIDUAL)
    weights = {k: v for k, v in build_twins(spec).weights.items()}
    weights["head.weight"] = np.zeros((4, 12), np.float32)
    save_file(weights, str(folder / "w.safetensors"))
    bad, = specs(folder, RESIDUAL + 'weights = "w.safetensors"\n')
    with pytest.raises(OnnxtwinError, match=r"model 'residual': weights .*w.safetensors: tensor "
                                            r"'head.weight' expected shape \(3, 12\), got "
                                            r"\(4, 12\)"):
        build_twins(bad)


def test_a_weights_file_replaces_the_initialisation(folder):
    from safetensors.numpy import save_file

    spec, = specs(folder, RESIDUAL)
    weights = {k: v + 0.5 for k, v in build_twins(spec, seed=4).weights.items()}
    save_file(weights, str(folder / "w.safetensors"))
    loaded, = specs(folder, RESIDUAL + 'weights = "w.safetensors"\n')
    got = build_twins(loaded, seed=9).weights
    assert all(np.array_equal(got[k], weights[k]) for k in weights)


def test_the_cli_refuses_a_bad_entry_in_one_line_and_writes_nothing(folder):
    (folder / "spec.toml").write_text(ENTRY.format('torch = "my_models.py:raises"'))
    out = folder / "report"
    result = onnxtwin("check", "--spec", str(folder / "spec.toml"), "--out", str(out))  # all models
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model 'bad': expected the torch factory" in lines[0]
    assert not out.exists()


def test_a_file_that_parts_from_its_torch_model_is_localised_to_the_module(folder, tmp_path):
    """A torch file whose `mix` bias was changed after export: the modules before it
    agree, and the first node that parts is the one the exporter scoped to `mix`."""
    import onnx
    from onnx import numpy_helper

    from onnxtwin.conformance.nodes import Side, localise_against_torch
    from onnxtwin.export import export_model
    from onnxtwin.runtime import Session
    from onnxtwin.runtime.paths import OnnxPath

    spec, = specs(folder, RESIDUAL)
    twins = build_twins(spec)
    path = export_model(twins, "torch", tmp_path, use_cache=False).path
    model = onnx.load(str(path))
    bias = next(i for i in model.graph.initializer if i.name == "mix.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.01, bias.name))
    onnx.save(model, str(path))
    x = sample_inputs(spec, batch=4, seq=9, seed=1)
    found = localise_against_torch(
        path, Side("torch.onnx@cpu", lambda f: OnnxPath(Session(f), "torch.onnx@cpu")),
        twins.torch_model, [x["tokens"]], x, 1e-5, {"batch": 4, "seq": 9})
    by_module = {d.origin.split("'")[1]: d for d in found.nodes if d.origin}
    assert not by_module["embed"].diverged and not by_module["norm"].diverged
    assert by_module["embed"].max_abs == 0 and by_module["norm"].max_abs < 1e-6
    assert by_module["mix"].diverged and by_module["mix"].max_abs > 1e-3
    assert found.first_divergent.startswith("Add node 'node_linear' (torch module 'mix'")  # README


def test_a_keras_export_is_cached_whatever_names_keras_numbered_its_layers(folder, tmp_path):
    """A second build names its layers dense_5 ... instead of dense ...: same weights, same
    graph, so the export cache must still hit."""
    from onnxtwin.export import export_model

    spec, = specs(folder, TWO_INPUTS)
    first, second = build_twins(spec), build_twins(spec)
    paths = [v.path for v in first.keras_model.weights]
    assert paths != [v.path for v in second.keras_model.weights]
    export_model(first, "keras", tmp_path / "a")  # a miss, or a hit of an earlier test's
    assert export_model(second, "keras", tmp_path / "b").cache_hit


def test_two_entries_around_different_objects_never_share_what_was_found():
    import torch

    from onnxtwin.builders import entry_from_models

    declared = [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    widths = []
    for width in (3, 5):
        spec = entry_from_models(torch.nn.Linear(4, width), inputs=declared, name="same")
        widths.append(spec.signature.outputs[0].shape)
    assert widths == [("batch", 3), ("batch", 5)]


def test_a_keras_object_alone_has_no_float64_oracle_and_says_so():
    import keras

    from onnxtwin.builders import entry_from_models

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    spec = entry_from_models(keras_model=model, source="keras", name="k-object",
                             inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 4]}])
    with pytest.raises(OnnxtwinError, match=r"model 'k-object': expected a keras factory that "
                                            r"builds a new model .* got 'a model object'"):
        build_twins(spec).oracle()


def test_bool_and_float64_inputs_are_drawn_in_their_dtype(folder):
    (folder / "masked.py").write_text(textwrap.dedent('''
        from __future__ import annotations

        from dataclasses import dataclass

        import torch


        @dataclass
        class Sizes:  # a dataclass in a factory file: the module must be importable by name
            width: int = 4


        class Masked(torch.nn.Module):
            def forward(self, x, mask):
                return (x.double() * mask).sum(dim=1)


        def masked():
            assert Sizes().width == 4
            return Masked()
    '''))
    spec, = specs(folder, '''
        [models.masked]
        torch = "masked.py:masked"
        inputs = [{ name = "x", dtype = "float64", shape = ["batch", 4] },
                  { name = "mask", dtype = "bool", shape = ["batch", 4] }]
        dims = { batch = [2, 5] }
    '''.replace("\n        ", "\n"))
    x = sample_inputs(spec, batch=5, seed=0)
    assert x["x"].dtype == np.float64 and x["mask"].dtype == np.bool_
    assert 0 < x["mask"].sum() < x["mask"].size
    expected = (x["x"] * x["mask"]).sum(axis=1)
    assert np.array_equal(build_twins(spec).torch.run(x)["output_0"], expected)


def test_the_source_of_a_weights_file_cannot_be_overridden(folder):
    from safetensors.numpy import save_file

    spec, = specs(folder, RESIDUAL)
    save_file(build_twins(spec).weights, str(folder / "w.safetensors"))
    loaded, = specs(folder, RESIDUAL.replace('torch = "my_models.py:residual"',
                                             'torch = "my_models.py:residual"\n'
                                             'keras = "my_models.py:residual_keras"')
                    + 'weights = "w.safetensors"\n')
    with pytest.raises(OnnxtwinError, match=r"model 'residual': expected source 'torch', whose "
                                            r"weights file it gives, got 'keras'"):
        build_twins(loaded, source="keras")


def test_exporting_a_side_the_entry_lacks_is_one_line(folder, tmp_path):
    from onnxtwin.export import export_model

    spec, = specs(folder, RESIDUAL)
    with pytest.raises(OnnxtwinError, match=r"model 'residual': expected a keras model, got an "
                                            r"entry with only torch"):
        export_model(build_twins(spec), "keras", tmp_path / "out")
    assert not (tmp_path / "out").exists()
