"""Hostile and careless input to the builders (issue 17): names that become paths, hyper-
parameters that would allocate without bound, training data that breaks training, tolerances
for models that do not exist, and two writers in one output folder. Each case builds its bad
input here and asserts the one line that refuses it (exit 2 from the command line)."""

from __future__ import annotations

import fcntl
import os
import re

import numpy as np
import pytest
import torch
from cli_runner import onnxtwin

from onnxtwin.builders import build_twins, get_spec, load_toml, load_twins, make_spec, names
from onnxtwin.builders.datasets import load_dataset
from onnxtwin.builders.families.cnn import CnnSpec
from onnxtwin.builders.training import load_trained
from onnxtwin.conformance.build import build_all
from onnxtwin.conformance.tolerances import load_tolerances
from onnxtwin.export.batch import export_all
from onnxtwin.runtime import OnnxtwinError, Tokenizer
from onnxtwin.runtime.files import inside, write_json

NAME_RULE = "1 to 64 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit"
WORD = "a word: 2+ letters or digits, not a stop word"


def one_line_error(result) -> str:
    """The `error:` line of a command that exited 2, with no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- names that become paths -----------------------------------------------------------------

BAD_NAMES = ["..", "", "a/b", "a\x01b", ".", ".hidden", "é", "x" * 65]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_variant_name_that_is_not_a_safe_file_name_is_refused(tmp_path, name, clean_registry):
    path = tmp_path / "f.toml"
    key = name.replace("\x01", "\\u0001")  # TOML spells a control character as an escape
    path.write_text(f'[models."{key}"]\nfamily = "cnn"\n', encoding="utf-8")
    with pytest.raises(OnnxtwinError) as e:
        load_toml(path)
    assert str(e.value) == f"spec file {path}: model name: expected {NAME_RULE}, got {name!r}"
    with pytest.raises(OnnxtwinError, match=r"^model name: expected 1 to 64 ASCII"):
        make_spec("cnn", name)
    with pytest.raises(OnnxtwinError, match=r"^cnn spec name: expected 1 to 64 ASCII"):
        CnnSpec(name=name)  # how `register` gets its specs: none exists with such a name


def test_build_with_a_dot_dot_variant_writes_nothing_outside_out(tmp_path):
    (tmp_path / "f.toml").write_text('[models.".."]\nfamily = "cnn"\n')
    result = onnxtwin("build", "--spec", "f.toml", "-m", "..", "--out", "A/B", cwd=tmp_path)
    assert one_line_error(result) == \
        f"error: spec file f.toml: model name: expected {NAME_RULE}, got '..'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.toml"]


def test_inside_refuses_a_path_that_leaves_its_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)  # resolves to out's parent
    assert inside(out, "cnn") == out / "cnn"
    assert inside(out, "cnn.torch.onnx") == out / "cnn.torch.onnx"
    for name in ["..", "", "a/b", "/etc", "a\0b", "link/x"]:
        with pytest.raises(OnnxtwinError) as e:
            inside(out, name)
        assert str(e.value) == (f"output name: expected an entry of the output folder {out}, "
                                f"got {name!r}, which leads elsewhere")


# --- hyper-parameters: bounds before any allocation -------------------------------------------

@pytest.mark.parametrize(("family", "field", "value", "expected"), [
    ("rnn", "hidden", [100000000], "expected hidden all >= 1 and <= 65536, got (100000000,)"),
    ("rnn", "hidden", [1] * 65, "expected at most 64 entries in hidden, got 65"),
    ("rnn", "hidden", [0] * 10**6, "expected at most 64 entries in hidden, got 1000000"),
    ("rnn", "vocab", -5, "expected vocab >= 2 and <= 16777216, got -5"),
    ("rnn", "classes", True, "expected classes to be int, got True"),
    ("transformer", "max_len", 10**12, "expected max_len >= 1 and <= 65536, got 1000000000000"),
    ("transformer", "max_len", 1e12, "expected max_len to be int, got 1000000000000.0"),
    ("transformer", "layers", 65, "expected layers >= 1 and <= 64, got 65"),
    ("transformer", "heads", 0, "expected heads >= 1 and <= 65536, got 0"),
    ("transformer", "norm_eps", float("inf"), "expected 0 < norm_eps < 1, got inf"),
    ("transformer", "norm_eps", float("nan"), "expected 0 < norm_eps < 1, got nan"),
    ("textcnn", "dropout", float("nan"), "expected 0 <= dropout < 1, got nan"),
    ("cnn", "image_size", 2**63 - 1,
     "expected image_size >= 1 and <= 65536, got 9223372036854775807"),
    ("cnn", "kernel_size", 2**70, "expected kernel_size >= 1 and <= 65536, got "
                                  "1180591620717411303424"),
    ("cnn", "image_size", 4096,  # the first conv's output: 32 channels of 4094 x 4094
     "expected at most 33554432 values per image in the input and in each conv output "
     f"(image_size 4096, channels [32, 64, 64]), got {32 * 4094 ** 2}"),
])
def test_hyperparameters_out_of_bounds_are_one_line(family, field, value, expected):
    with pytest.raises(OnnxtwinError) as e:
        make_spec(family, "x", **{field: value})
    assert str(e.value) == f"{family} spec 'x': {expected}"


@pytest.mark.parametrize(("field", "value", "start"), [
    ("hidden", ["a"] * 10**6, "expected hidden to be a non-empty tuple of int, got ('a', 'a'"),
    ("vocab", 10**400, "expected vocab >= 2 and <= 16777216, got 1000"),
    ("cell", "x" * 10**6, "expected cell in ('lstm', 'gru'), got 'xxx"),
])
def test_a_huge_value_is_shortened_in_its_message(field, value, start):
    with pytest.raises(OnnxtwinError) as e:
        make_spec("rnn", "x", **{field: value})
    assert str(e.value).startswith(f"rnn spec 'x': {start}") and len(str(e.value)) < 200


@pytest.mark.parametrize("seed", [-1, 2**32, 10**23, 1.5, True])
def test_a_seed_no_generator_takes_is_one_line(seed):
    with pytest.raises(OnnxtwinError) as e:
        build_twins("cnn", seed=seed)
    assert str(e.value) == f"seed: expected an int in [0, 4294967295], got {seed!r}"


def test_toml_nested_too_deep_to_parse_is_one_line(tmp_path, clean_registry):
    path = tmp_path / "deep.toml"
    path.write_text('[models.a]\nfamily = "rnn"\nhidden = ' + "[" * 10**5 + "]" * 10**5 + "\n")
    with pytest.raises(OnnxtwinError) as e:
        load_toml(path)
    assert str(e.value) == (f"spec file {path}: expected valid TOML, got arrays or tables "
                            "nested too deep to parse")


def test_a_spec_over_the_parameter_bound_is_refused_before_building():
    with pytest.raises(OnnxtwinError) as e:
        make_spec("rnn", "x", vocab=2**24, embed_dim=64)
    found = re.fullmatch(r"rnn spec 'x': expected at most 268435456 parameters \(1 GiB of "
                         r"float32\), got (\d+)", str(e.value))
    assert found and int(found[1]) > 2**24 * 64  # the embedding alone holds 2**30 weights


@pytest.mark.parametrize("spec", [
    *(get_spec(n) for n in ["cnn", "lstm", "gru", "bilstm", "transformer", "textcnn"]),
    make_spec("rnn", "g", cell="gru", hidden=[8, 6, 5], bidirectional=True, vocab=30, classes=3),
    make_spec("cnn", "c", in_channels=3, image_size=17, channels=[4, 6], kernel_size=5, dense=9),
    make_spec("transformer", "t", d_model=12, heads=3, layers=3, ff=7, max_len=33, vocab=40),
])
def test_the_parameter_count_is_the_torch_twins(spec):
    model = spec.torch_model()
    built = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert spec.parameter_count() == built


def test_a_huge_image_size_at_build_exits_2(tmp_path):
    (tmp_path / "big.toml").write_text(
        f'[models.big]\nfamily = "cnn"\nimage_size = {2**63 - 1}\n')
    result = onnxtwin("build", "--spec", "big.toml", "--out", "out", cwd=tmp_path)
    assert one_line_error(result) == ("error: cnn spec 'big': expected image_size >= 1 and "
                                      "<= 65536, got 9223372036854775807")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.toml"]


# --- training data ---------------------------------------------------------------------------

def csv_file(tmp_path, rows: list[str], encoding: str = "utf-8"):
    """A CSV with a header and 2 classes of 5 good rows, then `rows`."""
    good = [f"good fine great {i},pos" for i in range(5)] + [f"bad awful poor {i},neg"
                                                             for i in range(5)]
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "\n".join(good + rows) + "\n", encoding=encoding)
    return path


@pytest.mark.parametrize(("rows", "expected"), [
    (["hello world"], "expected 2 fields on every row (a text that holds a comma in quotes), "
                      "got 1 on line 12"),
    (["hello, world,pos"], "expected 2 fields on every row (a text that holds a comma in "
                           "quotes), got 3 on line 12"),
    (["hello world, "], "expected a label on every row, got an empty one on line 12"),
    ([",pos"], f"expected every text to hold {WORD}, got none on line 12: ''"),
    (["the a of it,neg"], f"expected every text to hold {WORD}, got none on line 12: "
                          "'the a of it'"),
    (["x" * 200_000 + ",pos"], "expected a well-formed CSV file, got field larger than field "
                               "limit (131072)"),
])
def test_bad_csv_rows_are_refused_naming_the_line(tmp_path, rows, expected):
    path = csv_file(tmp_path, rows)
    with pytest.raises(OnnxtwinError) as e:
        load_dataset(str(path))
    assert str(e.value) == f"{path}: {expected}"


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    data = load_dataset(str(csv_file(tmp_path, [], encoding="utf-8-sig")), vocab=50)
    assert data.classes == ("neg", "pos") and len(data.y_train) + len(data.y_test) == 10


def test_train_on_a_csv_with_an_empty_text_exits_2_and_leaves_no_folder(tmp_path):
    csv_file(tmp_path, [",pos"])
    result = onnxtwin("train", "-m", "transformer", "--data", "data.csv", "--out", "out",
                      "--provider", "cpu", cwd=tmp_path)
    assert one_line_error(result) == \
        f"error: data.csv: expected every text to hold {WORD}, got none on line 12: ''"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def npz_file(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "expected"), [
    ({"images": np.zeros((20, 8, 8), np.uint8), "labels": np.arange(19) % 2},
     "expected labels with one int, string or float per image (20), got int64 of shape [19]"),
    ({"images": np.zeros((20, 8, 8), np.uint8), "labels": np.zeros((20, 2), np.int64)},
     "expected labels with one int, string or float per image (20), got int64 of shape [20, 2]"),
    ({"images": np.zeros((20, 8, 8), np.uint8), "labels": np.r_[np.arange(19) % 2, np.nan]},
     "expected finite labels, got 1 NaN or infinite"),
    ({"images": np.zeros((20, 8, 8), np.uint8), "labels": np.arange(20) % 2,
      "test_images": np.zeros((4, 8, 8), np.uint8), "test_labels": np.arange(3) % 2},
     "expected test_labels with one int, string or float per image (4), got int64 of shape "
     "[3]"),
    ({"images": np.zeros((20, 0, 8), np.float32), "labels": np.arange(20) % 2},
     "images: expected images [N, H, W] or [N, C, H, W], none of them empty, got shape "
     "[20, 1, 0, 8]"),
    ({"images": np.full((20, 8, 8), np.nan, np.float32), "labels": np.arange(20) % 2},
     "images: expected uint8 images or finite floats in [0, 1], got float32 in [nan, nan]"),
    ({"images": np.ones((20, 8, 8), bool), "labels": np.arange(20) % 2},
     "images: expected uint8 images or finite floats in [0, 1], got bool"),
    ({"images": np.full((20, 8, 8), 300, np.int64), "labels": np.arange(20) % 2},
     "images: expected uint8 images or finite floats in [0, 1], got int64 in [300, 300]"),
])
def test_bad_image_arrays_are_one_line(tmp_path, arrays, expected):
    path = npz_file(tmp_path, **arrays)
    with pytest.raises(OnnxtwinError) as e:
        load_dataset(str(path))
    assert str(e.value) == f"{path}: {expected}"


def test_more_classes_than_a_model_may_output_are_refused(tmp_path):
    labels = np.repeat(np.arange(65537), 5)
    path = npz_file(tmp_path, images=np.zeros((len(labels), 1, 1), np.uint8), labels=labels)
    with pytest.raises(OnnxtwinError) as e:
        load_dataset(str(path))
    assert str(e.value) == f"{path}: expected at most 65536 classes, got 65537"


# --- the tokenizer: no all-padding row --------------------------------------------------------

def test_an_all_padding_row_is_nan_in_the_transformer_so_the_tokenizer_refuses_empty_texts():
    padding = torch.zeros((1, 5), dtype=torch.int64)
    with torch.no_grad():
        logits = get_spec("transformer").torch_model().eval()(padding)
    assert torch.isnan(logits).all()  # every key masked: why an empty text is refused
    tokenizer = Tokenizer.fit(["good day", "good night"], size=10, max_len=4)
    assert tokenizer.encode(["good day"]).tolist() == [[0, 0, 2, 1]]
    for texts, given in [(["good day", ""], "texts[1] = ''"), (["a !"], "texts[0] = 'a !'"),
                         (["fine", None], "texts[1] = None")]:
        with pytest.raises(OnnxtwinError) as e:
            tokenizer.encode(texts)
        assert str(e.value) == f"tokenizer: expected every text to hold {WORD}, got {given}"
    with pytest.raises(OnnxtwinError) as e:
        tokenizer.encode("good day")
    assert str(e.value) == "tokenizer: expected a list of texts, got one string 'good day'"
    with pytest.raises(OnnxtwinError) as e:
        tokenizer.encode(["good"], max_len=10**12)
    assert str(e.value) == \
        "tokenizer: expected max_len to be an int in [1, 65536], got 1000000000000"


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("max_len", 10**12,
     "tokenizer: expected max_len to be an int in [1, 65536], got 1000000000000"),
    ("max_len", "7", "tokenizer: expected max_len to be an int in [1, 65536], got '7'"),
    ("pattern", "(", "tokenizer: expected a valid regular expression as pattern, got '(' "
                     "(missing ), unterminated subpattern at position 0)"),
    ("vocabulary", ["ok", 5], "tokenizer: expected the vocabulary, stop words and pattern to "
                              "be strings, got another type among them"),
])
def test_a_hostile_tokenizer_file_is_one_line(tmp_path, field, value, expected):
    import json

    document = {"format": "onnxtwin-tokenizer/1", "vocabulary": ["ok"], "max_len": 4,
                "stop_words": [], "pattern": r"(?u)\b\w\w+\b", field: value}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(document))
    with pytest.raises(OnnxtwinError) as e:
        Tokenizer.load(path)
    assert str(e.value) == f"tokenizer file {path}: {expected}"


def test_a_fifo_for_spec_json_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "spec.json")  # reading it would wait for a writer for ever
    with pytest.raises(OnnxtwinError) as e:
        load_twins(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'spec.json'}: expected the spec.json of twins saved "
                            "by onnxtwin, got a FIFO (named pipe)")


def test_a_trained_folder_whose_tokenizer_or_seed_cannot_be_used_is_one_line(tmp_path):
    folder = tmp_path / "tiny"
    build_twins(make_spec("rnn", "tiny", vocab=20, embed_dim=4, hidden=[4], classes=2)).save(
        folder)
    record = {"data": "bbc-news", "classes": ["a", "b"], "seed": 0, "framework": "torch",
              "recipe": {"epochs": 1, "batch_size": 8, "learning_rate": 0.001},
              "history": [], "samples": 10}
    write_json(folder / "training.json", record)
    Tokenizer(tuple(f"w{i}" for i in range(30)), 8).save(folder / "tokenizer.json")
    with pytest.raises(OnnxtwinError) as e:  # ids up to 31 for an embedding of 20 rows
        load_trained(folder)
    assert str(e.value) == (f"{folder}: expected a tokenizer.json of at most vocab=20 ids for "
                            "a model that reads tokens and none otherwise, got 32")
    write_json(folder / "training.json", {**record, "seed": -1})
    with pytest.raises(OnnxtwinError) as e:
        load_trained(folder)
    assert str(e.value) == (f"{folder / 'training.json'}: expected a training record, got "
                            "OnnxtwinError: seed: expected an int in [0, 4294967295], got -1")


# --- tolerances ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "file_models", "expected"), [
    ("[tolerances]\ngrue = 1e-4\n", [], "[tolerances] expected models among {}, got 'grue'"),
    ('[models.mine]\nfamily = "cnn"\n[tolerances]\nmyne = 1e-4\n', ["mine"],
     "[tolerances] expected models among {}, got 'myne'"),
    ("[tolerances.gru]\nlogitz = 1e-4\n", [],
     "[tolerances.gru] expected outputs among ['logits'], got 'logitz'"),
])
def test_a_tolerance_for_an_unknown_model_or_output_is_refused(tmp_path, text, file_models,
                                                                 expected, clean_registry):
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(OnnxtwinError) as e:
        load_tolerances(path)
    known = [*names(), *file_models]  # the registry's models, then the file's
    assert str(e.value) == f"spec file {path}: {expected.format(known)}"


def test_tolerances_for_the_files_own_models_and_no_infinite_one(tmp_path, clean_registry):
    path = tmp_path / "f.toml"
    path.write_text('[models.mine]\nfamily = "cnn"\n[tolerances.mine]\nlogits = 2e-5\n')
    assert load_tolerances(path).get("mine", "logits", "float32") == 2e-5
    path.write_text("[tolerances]\ngru = inf\n")
    with pytest.raises(OnnxtwinError) as e:
        load_tolerances(path)
    assert str(e.value) == f"{path}: tolerances.gru: expected a positive number, got inf"


# --- one writer per output folder ------------------------------------------------------------

@pytest.mark.parametrize("writer", [
    lambda out: export_all([get_spec("cnn")], ("torch",), out),
    lambda out: build_all([get_spec("cnn")], out=out),
], ids=["export_all", "build_all"])
def test_a_second_writer_into_a_locked_folder_is_refused(tmp_path, writer):
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".onnxtwin.lock").open("a") as held:  # another process's lock, in effect
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OnnxtwinError) as e:
            writer(out)
    assert str(e.value) == (f"output folder {out.resolve()}: expected no other onnxtwin "
                            "process writing into it, got one holding .onnxtwin.lock")
    assert [p.name for p in out.iterdir()] == [".onnxtwin.lock"]


def test_a_sequence_longer_than_the_transformers_positions_is_refused_in_one_line(tmp_path):
    from onnxtwin.export import export_model
    from onnxtwin.runtime import Session

    spec = make_spec("transformer", "short", d_model=8, heads=2, layers=1, ff=16, max_len=20)
    assert {p["seq"] for p in spec.gate_points()} == {1, 12}  # 50 is past its positions
    session = Session(export_model(build_twins(spec), "torch", tmp_path).path)
    assert session.run({"tokens": np.ones((2, 20), np.int64)})["logits"].shape == (2, 10)
    with pytest.raises(OnnxtwinError) as refused:
        session.run({"tokens": np.ones((2, 21), np.int64)})
    assert str(refused.value) == ("input 'tokens': expected seq <= 20 (the largest the model "
                                  "takes), got int64[2, 21]")


def test_labels_zero_and_negative_zero_are_one_class(tmp_path):
    path = tmp_path / "signed.npz"
    images = np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array([0.0, -0.0, 1.0, 1.0] * 25))
    dataset = load_dataset(str(path))
    assert dataset.classes == ("0.0", "1.0")
    y = np.concatenate([dataset.y_train, dataset.y_test])
    assert sorted(np.bincount(y).tolist()) == [50, 50]
