"""Exports: one shared signature, a gate that runs the files, and a gate that catches breakage."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest

from onnxtwin.builders import builtins, sample_inputs
from onnxtwin.export import cache as export_cache
from onnxtwin.export import export_model, graph_differences
from onnxtwin.export.gate import check_file
from onnxtwin.export.graphs import written_opset
from onnxtwin.export.metadata import read_metadata
from onnxtwin.export.signature import read_signature
from onnxtwin.runtime.errors import OnnxtwinError

NAMES = [s.name for s in builtins()]
TOLERANCE = 1e-5


def _expected_signature(spec):
    return ([(t.name, t.dtype, t.shape) for t in spec.signature.inputs],
            [(t.name, t.dtype, t.shape) for t in spec.signature.outputs])


@pytest.mark.parametrize("name", NAMES)
def test_both_exports_pass_the_gate_with_one_signature(twins_of, name, tmp_path):
    twins = twins_of(name)
    results = [export_model(twins, fw, tmp_path, opset=18) for fw in ("torch", "keras")]
    models = [onnx.load(str(r.path)) for r in results]
    assert read_signature(models[0]) == read_signature(models[1]) == \
        _expected_signature(twins.spec)
    for r, m in zip(results, models, strict=True):
        assert len(r.gate) == (6 if twins.spec.family != "cnn" else 2)
        assert r.max_abs <= TOLERANCE
        assert written_opset(m) == 18
        meta = read_metadata(m)
        assert meta["onnxtwin.variant"] == name and meta["onnxtwin.framework"] == r.framework
        assert meta["onnxtwin.spec_hash"] == twins.spec.spec_hash
        for tool in ("onnxtwin", "torch", "tensorflow-cpu", "tf2onnx", "onnx"):
            assert meta[f"onnxtwin.version.{tool}"] != "absent"
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(f"{name}.{fw}.onnx" for fw in ("torch", "keras"))  # single files, no .data


def test_files_are_interchangeable_at_new_shapes(twins_of, tmp_path):
    """Either file answers the same inputs the same way, at a batch and length never gated."""
    import onnxruntime as ort

    twins = twins_of("bilstm")
    x = sample_inputs(twins.spec, batch=5, seq=33, seed=9)
    outs = [ort.InferenceSession(str(export_model(twins, fw, tmp_path).path),
                                 providers=["CPUExecutionProvider"]).run(["logits"], x)[0]
            for fw in ("torch", "keras")]
    np.testing.assert_allclose(outs[0], outs[1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(outs[0], twins.oracle().run(x)["logits"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["cnn", "gru", "transformer-gelu"])
def test_opset_17(twins_of, name, tmp_path):
    for fw in ("torch", "keras"):
        r = export_model(twins_of(name), fw, tmp_path, opset=17)
        assert r.max_abs <= TOLERANCE
        assert written_opset(onnx.load(str(r.path))) == 17


def test_keras_gru_exports_as_the_native_gru_op_like_torch(twins_of, tmp_path):
    """tf2onnx alone gives Keras 3's GRU as a Loop; export/keras_gru.py rewrites it."""
    results = [export_model(twins_of("gru"), fw, tmp_path) for fw in ("torch", "keras")]
    for r in results:
        assert r.ops["GRU"] == 2 and "Loop" not in r.ops and r.max_abs <= TOLERANCE
    assert graph_differences(results) == []


def test_graph_differences_in_kind_are_said(twins_of, tmp_path):
    """Both Transformer files hold LayerNormalization (export/keras_rewrites.py fuses
    Keras'); a Keras file without it would be said."""
    import dataclasses

    torch_file, keras_file = (export_model(twins_of("transformer"), fw, tmp_path)
                              for fw in ("torch", "keras"))
    assert torch_file.ops["LayerNormalization"] == keras_file.ops["LayerNormalization"] == 4
    assert graph_differences([torch_file, keras_file]) == []
    decomposed = dataclasses.replace(keras_file, ops={
        op: n for op, n in keras_file.ops.items() if op != "LayerNormalization"})
    assert graph_differences([torch_file, decomposed]) == \
        ["only the torch file has LayerNormalization"]


def test_keras_bidirectional_gru_exports_as_native_gru_ops(tmp_path):
    from onnxtwin.builders import build_twins, make_spec

    twins = build_twins(make_spec("rnn", "bigru", cell="gru", bidirectional=True))
    result = export_model(twins, "keras", tmp_path)
    assert result.ops["GRU"] == 2 and "Loop" not in result.ops
    assert result.max_abs <= TOLERANCE


def test_exact_gelu_exports_from_keras_as_erf(twins_of, tmp_path):
    r = export_model(twins_of("transformer-gelu"), "keras", tmp_path)
    assert r.ops["Erf"] == 2 and "Erfc" not in r.ops


@pytest.mark.parametrize(("framework", "opset", "message"), [
    ("keras", 19, r"^opset for keras: expected one of \[17, 18\], got 19$"),
    ("torch", 16, r"^opset for torch: expected one of \[17, 18, 19, 20\], got 16$"),
    ("jax", 18, r"^framework: expected one of \('torch', 'keras'\), got 'jax'$"),
])
def test_unsupported_requests_are_refused(twins_of, tmp_path, framework, opset, message):
    with pytest.raises(OnnxtwinError, match=message):
        export_model(twins_of("cnn"), framework, tmp_path, opset=opset)


def test_gate_catches_tf2onnx_unsupported_ops(twins_of, tmp_path, monkeypatch):
    """Without the Erfc handler tf2onnx only logs; the export must fail and write nothing."""
    import tf2onnx

    convert = tf2onnx.convert.from_function
    monkeypatch.setattr(tf2onnx.convert, "from_function",
                        lambda *a, custom_op_handlers=None, **kw: convert(*a, **kw))
    with pytest.raises(OnnxtwinError, match=r"tf2onnx \(transformer-gelu\): expected a clean "
                                            r"conversion, got: .*Unsupported ops.*Erfc"):
        export_model(twins_of("transformer-gelu"), "keras", tmp_path, use_cache=False)
    assert not list(tmp_path.iterdir())


def test_gate_catches_an_unknown_op(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Erfc", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "erfc.onnx"))
    with pytest.raises(OnnxtwinError, match=r"^test: expected a valid ONNX model, onnx.checker "
                                            r"says: .*Erfc"):
        check_file(tmp_path / "erfc.onnx", 18, "test")


def test_gate_catches_a_baked_in_sequence_length(twins_of, tmp_path, monkeypatch):
    """Without the RNN workaround torch bakes the example length in; only running shows it."""
    from onnxtwin.export import torch_export

    monkeypatch.setattr(torch_export, "rnn_while_loop_decompositions", contextlib.nullcontext)
    with pytest.raises(OnnxtwinError, match=r"^torch export of 'lstm' \(opset 18\) at batch 1, "
                                            r"seq 1: .*lstm.torch.onnx: expected onnxruntime to "
                                            r"run it on tokens int64\[1, 1\], got: "):
        export_model(twins_of("lstm"), "torch", tmp_path, use_cache=False)
    assert not list(tmp_path.iterdir())


def test_cache_hits_and_discards_a_corrupt_entry(twins_of, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXTWIN_CACHE", str(tmp_path / "cache"))
    twins = twins_of("cnn")
    first = export_model(twins, "keras", tmp_path / "a")
    again = export_model(twins, "keras", tmp_path / "b")
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert again.path.read_bytes() == first.path.read_bytes()
    for entry in export_cache.cache_dir().glob("*.onnx"):
        entry.write_bytes(entry.read_bytes()[:50])  # truncate every entry
    third = export_model(twins, "keras", tmp_path / "c")
    assert not third.cache_hit and third.max_abs <= TOLERANCE
    assert third.ops == first.ops  # re-exported (tf2onnx's generated names may differ)


def test_gate_catches_a_silent_opset_change(twins_of, tmp_path):
    path = export_model(twins_of("cnn"), "torch", tmp_path, opset=18).path
    with pytest.raises(OnnxtwinError, match=r"^test: expected opset 17, the exporter wrote 18$"):
        check_file(path, 17, "test")


@pytest.mark.slow
@pytest.mark.parametrize(("framework", "opset"), [("torch", 17), ("keras", 17), ("torch", 19),
                                                  ("torch", 20)])
@pytest.mark.parametrize("name", NAMES)
def test_every_variant_at_other_opsets(twins_of, name, framework, opset, tmp_path):
    r = export_model(twins_of(name), framework, tmp_path, opset=opset)
    assert r.max_abs <= TOLERANCE
    assert written_opset(onnx.load(str(r.path))) == opset


def test_export_optimized_writes_a_gated_onnxruntime_graph(tmp_path):
    import json

    from onnxtwin.runtime import Session
    from tests.cli_runner import onnxtwin

    result = onnxtwin("export", "-m", "cnn", "--framework", "torch", "--optimized", "--out",
                      str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads((tmp_path / "export.json").read_text())["models"][0]["files"]
    assert record["optimized"]["path"] == "cnn.torch.opt.onnx"
    assert record["optimized"]["gate_max_abs"] <= TOLERANCE
    optimized = onnx.load(str(tmp_path / "cnn.torch.opt.onnx"))
    ops = {(n.domain, n.op_type) for n in optimized.graph.node}
    assert ("com.microsoft", "FusedConv") in ops and ("", "Conv") not in ops
    plain, fused = (Session(tmp_path / f) for f in ("cnn.torch.onnx", "cnn.torch.opt.onnx"))
    assert fused.inputs == plain.inputs and fused.metadata == plain.metadata
    x = sample_inputs(builtins()[0], batch=5, seed=1)
    assert np.abs(fused.run(x)["logits"] - plain.run(x)["logits"]).max() <= 1e-6


def test_optimized_transformer_keeps_layernorm_unfused_on_cpu(twins_of, tmp_path):
    """onnxruntime's CPU SkipLayerNormalization is slower than Add + LayerNormalization
    (runtime.session.CPU_SLOW_FUSIONS): the offline graph must not contain it."""
    from onnxtwin.export.optimize import optimize_offline

    twins = twins_of("transformer")
    path, gate = optimize_offline(export_model(twins, "torch", tmp_path).path, twins, "torch")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "SkipLayerNormalization" not in ops
    assert ops.count("LayerNormalization") == 2 * twins.spec.layers
    assert max(c.max_abs for c in gate) <= TOLERANCE
