"""Registry: built-ins, user variants from code and TOML, and one-line errors for bad specs."""

from __future__ import annotations

import pytest

from onnxtwin.builders import build_twins, get_spec, load_toml, make_spec, names, register
from onnxtwin.conformance.native import native_parity
from onnxtwin.runtime.errors import OnnxtwinError


def test_builtin_variants_and_signatures():
    assert names()[:6] == ["cnn", "lstm", "gru", "bilstm", "transformer", "transformer-gelu"]
    cnn, bilstm = get_spec("cnn").signature, get_spec("bilstm").signature
    assert (cnn.inputs[0].name, cnn.inputs[0].dtype, cnn.inputs[0].shape) == \
        ("image", "float32", ("batch", 1, 28, 28))
    assert (bilstm.inputs[0].name, bilstm.inputs[0].dtype, bilstm.inputs[0].shape) == \
        ("tokens", "int64", ("batch", "seq"))
    for name in names()[:6]:
        out = get_spec(name).signature.outputs
        assert [(t.name, t.dtype, t.shape) for t in out] == [("logits", "float32", ("batch", 10))]
    assert get_spec("transformer-gelu").activation == "gelu"
    assert get_spec("gru").hidden == (64, 32) and get_spec("lstm").vocab == 10000


@pytest.mark.parametrize(("call", "message"), [
    (lambda: get_spec("resnet"), r"^unknown model 'resnet': expected one of \['cnn', "),
    (lambda: make_spec("mlp", "x"), r"^model 'x': unknown family 'mlp', expected one of"),
    (lambda: make_spec("rnn", "x", hiden=[8]), r"^model 'x': unknown field\(s\) \['hiden'\]"),
    (lambda: make_spec("rnn", "x", cell="rnn"),
     r"^rnn spec 'x': expected cell in \('lstm', 'gru'\), got 'rnn'$"),
    (lambda: make_spec("rnn", "x", hidden="64"),
     r"^rnn spec 'x': expected hidden to be tuple, got '64'$"),
    (lambda: make_spec("rnn", "x", hidden=[]),
     r"^rnn spec 'x': expected hidden to be a non-empty tuple of int, got \(\)$"),
    (lambda: make_spec("rnn", "x", bidirectional=1),
     r"^rnn spec 'x': expected bidirectional to be bool, got 1$"),
    (lambda: make_spec("transformer", "x", d_model=30, heads=4),
     r"^transformer spec 'x': expected d_model divisible by heads=4, got 30$"),
    (lambda: make_spec("cnn", "x", image_size=8),
     r"^cnn spec 'x': expected an image_size the 3 convs of kernel 3 and the pools leave "
     r"at least 1 pixel of, got 8$"),
    (lambda: make_spec("cnn", "x", classes=0),
     r"^cnn spec 'x': expected classes >= 1 and <= 65536, got 0$"),
    (lambda: register(make_spec("rnn", "gru")), r"^model 'gru': expected a name that is not"),
])
def test_bad_specs_get_one_line_errors(call, message, clean_registry):
    with pytest.raises(OnnxtwinError, match=message) as e:
        call()
    assert "\n" not in str(e.value)


def test_user_variant_from_code_builds_agreeing_twins(clean_registry):
    spec = register(make_spec("rnn", "tiny-bigru", cell="gru", hidden=[8, 6], vocab=50,
                              embed_dim=4, bidirectional=True, classes=3))
    assert get_spec("tiny-bigru") is spec and spec.hidden == (8, 6)
    parity = native_parity(build_twins("tiny-bigru", seed=5))
    assert parity.passed and parity.worst("torch_vs_keras") < 1e-6


def test_user_variants_from_toml(tmp_path, clean_registry):
    path = tmp_path / "models.toml"
    path.write_text('[models.small-cnn]\nfamily = "cnn"\nchannels = [4, 8]\nimage_size = 16\n'
                    'classes = 5\n\n[models.deep-gelu]\nfamily = "transformer"\nd_model = 16\n'
                    'heads = 2\nlayers = 3\nff = 32\nactivation = "gelu"\nvocab = 100\n')
    specs = load_toml(path)
    assert [s.name for s in specs] == ["small-cnn", "deep-gelu"]
    assert get_spec("small-cnn").signature.inputs[0].shape == ("batch", 1, 16, 16)
    for spec in specs:
        parity = native_parity(build_twins(spec, seed=2))
        assert parity.passed, (spec.name, parity.worst("torch_vs_keras"))
    assert len(build_twins("deep-gelu").spec.layer_maps()) == 1 + 3 * 5 + 1


@pytest.mark.parametrize(("text", "message"), [
    ('[models.a]\nfamily = "rnn"\ncell = \n', r"expected valid TOML, got .*\(at line 3"),
    ('[models.a]\ncell = "gru"\n', r"model 'a' expected a table with one of 'family', 'onnx'"),
    ('[model.a]\nfamily = "rnn"\n', r"expected \[models.NAME\] tables, got top-level keys"),
])
def test_bad_toml_is_refused(tmp_path, text, message, clean_registry):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(OnnxtwinError, match=message):
        load_toml(path)


def test_missing_toml_file(tmp_path):
    with pytest.raises(OnnxtwinError, match=r"expected a readable TOML file, got .*nope\.toml"):
        load_toml(tmp_path / "nope.toml")


def test_spec_hash_ignores_the_name_only():
    a, b = make_spec("rnn", "a"), make_spec("rnn", "b")
    assert a.spec_hash == b.spec_hash == get_spec("lstm").spec_hash
    assert make_spec("rnn", "a", classes=9).spec_hash != a.spec_hash


def test_the_registry_refuses_a_second_family_or_builtin_of_one_name(clean_registry):
    from dataclasses import dataclass
    from typing import ClassVar

    from onnxtwin.builders.registry import builtin, family
    from onnxtwin.builders.signature import ModelSpec

    twice = r"^family 'rnn' is registered twice \(RnnSpec, .*Other\)$"
    with pytest.raises(ValueError, match=twice):
        @family
        @dataclass(frozen=True)
        class Other(ModelSpec):
            family: ClassVar[str] = "rnn"
            name: str = "other"
    with pytest.raises(ValueError, match=r"^built-in model 'gru' is registered twice$"):
        builtin(make_spec("rnn", "gru", cell="gru"))
    assert get_spec("gru").cell == "gru" and get_spec("gru").hidden == (64, 32)
