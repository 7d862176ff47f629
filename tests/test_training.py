"""Real data, the tokenizer, and training: learning happens and every path agrees afterwards."""

from __future__ import annotations

import collections
import json
from importlib.resources import files

import jsonschema
import numpy as np
import pytest
from cli_runner import onnxtwin
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from onnxtwin.builders import builtins
from onnxtwin.builders.datasets import bbc_news_texts, fashion_mnist, load_dataset
from onnxtwin.builders.training import Recipe, load_trained, train
from onnxtwin.conformance.accuracy import evaluate
from onnxtwin.runtime import OnnxtwinError, Tokenizer
from onnxtwin.runtime.paths import FunctionPath, PathInfo
from onnxtwin.runtime.tokenizer import PAD, UNKNOWN

SCHEMA = json.loads(files("onnxtwin.conformance").joinpath("report.schema.json").read_text())
QUICK = Recipe(epochs=3, batch_size=16, learning_rate=2e-3)


@pytest.fixture(scope="module")
def fashion():
    return fashion_mnist()


@pytest.fixture(scope="module")
def bbc():
    return load_dataset("bbc-news", vocab=10000, seed=0)


# --- tokenizer -------------------------------------------------------------------------------

def test_tokenizer_ranks_by_frequency_and_pads_on_the_left():
    texts = ["the cat sat on the mat", "The cat ran", "a dog ran, the dog sat"]
    tok = Tokenizer.fit(texts, size=6, max_len=4, stop_words={"on"}, min_count=2)
    # counts: the 3, cat 2, dog 2, ran 2, sat 2; "a" is one character, "on" a stop word
    assert tok.vocabulary == ("the", "cat", "dog", "ran")
    assert tok.size == 6
    assert tok.encode(["The cat!", "sat the mat dog ran cat"]).tolist() == [
        [PAD, PAD, 2, 3], [UNKNOWN, 2, UNKNOWN, 4]]  # the first max_len words are kept
    assert tok.encode(["cat"], max_len=2).tolist() == [[PAD, 3]]


def test_tokenizer_round_trips_through_its_file(tmp_path, bbc):
    path = bbc.tokenizer.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(path)
    assert again == bbc.tokenizer
    assert np.array_equal(again.encode(bbc.texts_test[:20]), bbc.x_test[:20])


@pytest.mark.parametrize(("content", "message"), [
    ("", "got an empty file"),
    ("{not json", "expected an onnxtwin-tokenizer/1 JSON document, got JSONDecodeError"),
    ('{"format": "other"}', "expected an onnxtwin-tokenizer/1 JSON document"),
])
def test_tokenizer_file_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(OnnxtwinError, match=message):
        Tokenizer.load(path)


# --- datasets --------------------------------------------------------------------------------

def test_fashion_mnist_is_the_full_debian_dataset(fashion):
    assert fashion.x_train.shape == (60000, 1, 28, 28)
    assert fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.x_train.dtype == np.float32
    assert fashion.x_train.min() == 0.0 and fashion.x_train.max() == 1.0
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXTWIN_FASHION_MNIST", str(tmp_path))
    with pytest.raises(OnnxtwinError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist()


def test_bbc_news_split_is_stratified_seeded_and_fitted_on_train_only(bbc):
    texts, labels = bbc_news_texts()
    assert len(texts) == 2225
    assert bbc.classes == ("business", "entertainment", "politics", "sports", "tech")
    assert len(bbc.y_train) == 1780 and len(bbc.y_test) == 445
    full = np.bincount([bbc.classes.index(label) for label in labels])
    assert np.abs(np.bincount(bbc.y_test) - full * 0.2).max() <= 1  # stratified
    assert bbc.x_train.shape == (1780, 200) and bbc.x_train.dtype == np.int64
    assert bbc.tokenizer.size <= 10000
    again = load_dataset("bbc-news", seed=0)
    assert again.texts_test == bbc.texts_test and again.tokenizer == bbc.tokenizer
    assert load_dataset("bbc-news", seed=1).texts_test != bbc.texts_test
    train_texts = list((collections.Counter(texts) - collections.Counter(bbc.texts_test))
                       .elements())
    assert len(train_texts) == 1780
    refit = Tokenizer.fit(train_texts, 10000, 200, ENGLISH_STOP_WORDS)
    assert refit == bbc.tokenizer  # the test split had no say in the vocabulary


def test_real_inputs_follow_the_requested_shape(bbc, fashion, twins_of):
    tokens = bbc.inputs(twins_of("lstm").spec, batch=3, seq=12, seed=5)["tokens"]
    assert tokens.shape == (3, 12) and (tokens[:, -1] > 0).all()
    again = bbc.inputs(twins_of("lstm").spec, {"batch": 3, "seq": 12}, seed=5)["tokens"]
    assert np.array_equal(tokens, again)
    images = fashion.inputs(twins_of("cnn").spec, batch=2)["image"]
    assert images.shape == (2, 1, 28, 28)


def test_user_csv_and_npz_data(tmp_path):
    rows = [("good fine great", "pos"), ("bad awful poor", "neg")] * 10
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("text,label\n" + "\n".join(f"{t},{lab}" for t, lab in rows) + "\n")
    reviews = load_dataset(str(csv_path), vocab=50)
    assert reviews.classes == ("neg", "pos") and len(reviews.y_test) == 4
    assert reviews.kind == "text"

    npz = tmp_path / "digits.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
             labels=np.repeat(["a", "b", "c"], 10))
    digits = load_dataset(str(npz))
    assert digits.x_train.shape == (24, 1, 28, 28) and digits.classes == ("a", "b", "c")

    one_epoch = Recipe(epochs=1, batch_size=8, learning_rate=1e-3)
    assert train("cnn", digits, recipe=one_epoch).twins.spec.classes == 3
    trained = train("transformer", reviews, framework="keras", recipe=one_epoch)
    assert trained.twins.spec.classes == 2 and trained.tokenizer == reviews.tokenizer


@pytest.mark.parametrize(("name", "content", "message"), [
    ("x.csv", "words,label\nhi,a\n", "expected columns text and label, got ['label', 'words']"),
    ("x.csv", "text,label\nhi,a\nho,b\n", "expected at least 2 classes with 5 samples each"),
    ("x.txt", "hello", "expected one of ['fashion-mnist', 'bbc-news'], a .npz of images or a "
                       ".csv of texts, got"),
])
def test_bad_user_data_is_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(OnnxtwinError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(str(path))


def test_a_test_split_needs_both_images_and_labels(tmp_path):
    npz = tmp_path / "half.npz"
    np.savez(npz, images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) % 2,
             test_images=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(OnnxtwinError, match=r"expected test_images and test_labels together or "
                                            r"neither, got \['images', 'labels', 'test_images'\]"):
        load_dataset(str(npz))


def test_images_outside_zero_one_are_refused(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, images=np.full((20, 28, 28), 3.0, np.float32), labels=np.arange(20) % 2)
    with pytest.raises(OnnxtwinError, match=r"finite floats in \[0, 1\], got float32 in \[3.0"):
        load_dataset(str(npz))


def test_model_and_data_must_match(bbc, fashion):
    with pytest.raises(OnnxtwinError, match=r"model 'cnn' \(cnn\): expected image data, got text"):
        train("cnn", bbc, recipe=QUICK)
    with pytest.raises(OnnxtwinError, match=r"model 'gru' \(rnn\): expected text data, got image"):
        train("gru", fashion, recipe=QUICK)


# --- training --------------------------------------------------------------------------------

def agreement(trained, data):
    """evaluate() on the twins alone (no export): torch and keras vs the oracle and each other."""
    twins = trained.twins
    return evaluate([twins.torch, twins.keras_compiled], twins.oracle(), twins.oracle(jitter=0),
                    data.x_test, data.y_test, 1e-5, data.name)


def test_cnn_learns_fashion_mnist_subset_and_twins_agree(fashion):
    data = fashion.subset(600, 500, seed=0)
    trained = train("cnn", data, recipe=QUICK, seed=0)
    losses = [e.loss for e in trained.history]
    assert losses[1] < losses[0] < np.log(10)  # chance-level cross-entropy is ln 10 = 2.30
    result = agreement(trained, data)
    assert all(p.accuracy >= 0.45 for p in result.paths), result  # chance: 10%
    assert result.pairs[0].disagreements == 0 and result.passed, result


def test_training_is_reproducible_from_the_seed(fashion):
    data = fashion.subset(200, 100, seed=1)
    recipe = Recipe(epochs=1, batch_size=50, learning_rate=1e-3)
    first, second = (train("cnn", data, recipe=recipe, seed=3) for _ in range(2))
    assert first.history[0].loss == second.history[0].loss
    for name, value in first.twins.weights.items():
        assert np.array_equal(value, second.twins.weights[name]), name


def test_keras_training_is_reproducible_from_the_seed(bbc):
    data = bbc.subset(100, 20, seed=1)
    recipe = Recipe(epochs=1, batch_size=25, learning_rate=1e-3, word_dropout=0.4)
    first, second = (train("gru", data, framework="keras", recipe=recipe, seed=3)
                     for _ in range(2))
    assert first.history[0].loss == second.history[0].loss
    for name, value in first.twins.weights.items():
        assert np.array_equal(value, second.twins.weights[name]), name


def test_transformer_learns_bbc_subset_from_keras_and_twins_agree(bbc):
    data = bbc.subset(400, 200, seed=0)
    trained = train("transformer", data, framework="keras", recipe=QUICK, seed=0)
    assert trained.twins.spec.classes == 5
    assert trained.history[1].loss < trained.history[0].loss
    result = agreement(trained, data)
    assert all(p.accuracy >= 0.40 for p in result.paths), result  # chance: 20%
    assert result.passed, result


def test_trained_folder_round_trips(tmp_path, bbc):
    data = bbc.subset(100, 50, seed=0)
    trained = train("gru", data, recipe=Recipe(epochs=1, batch_size=50, learning_rate=1e-3))
    trained.save(tmp_path / "gru")
    assert sorted(p.name for p in (tmp_path / "gru").iterdir()) == [
        "keras.weights.h5", "spec.json", "tokenizer.json", "torch.safetensors", "training.json"]
    again = load_trained(tmp_path / "gru")
    assert again.tokenizer == bbc.tokenizer and again.classes == bbc.classes
    assert again.history == trained.history and again.data == "bbc-news"
    x = data.inputs(again.twins.spec, batch=4, seq=30)
    assert np.array_equal(again.twins.torch.run(x)["logits"], trained.twins.torch.run(x)["logits"])
    record = json.loads((tmp_path / "gru" / "training.json").read_text())
    assert record["recipe"]["epochs"] == 1 and record["framework"] == "torch"


def test_missing_trained_folder_is_one_line(tmp_path):
    with pytest.raises(OnnxtwinError, match=r"expected .*training.json \(written by `onnxtwin "
                                            r"train`\), got no such file"):
        load_trained(tmp_path / "cnn")


# --- the command line ------------------------------------------------------------------------

def test_train_command_writes_trained_twins_and_an_accuracy_report(tmp_path):
    result = onnxtwin("train", "-m", "lstm", "--limit", "200", "--epochs", "3", "--out",
                      str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 3/3: loss" in result.stdout
    assert sorted(p.name for p in (tmp_path / "lstm").iterdir()) == [
        "keras.weights.h5", "spec.json", "tokenizer.json", "torch.safetensors", "training.json"]
    document = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(document, SCHEMA)
    assert document["settings"]["trained"] == str(tmp_path)
    accuracy = document["models"][0]["accuracy"]
    assert accuracy["samples"] == 445  # the whole BBC test split, not the 200 of --limit
    assert len(accuracy["paths"]) == 4 and len({p["accuracy"] for p in accuracy["paths"]}) == 1
    assert all(p["agreement"] == 1.0 for p in accuracy["pairs"]) and accuracy["passed"]
    assert "## Accuracy on the test set" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["check", "--trained", "nowhere", "-m", "gru"],
     "error: trained model: expected nowhere/gru/training.json (written by `onnxtwin train`), "
     "got no such file"),
    (["train", "-m", "cnn", "--data", "bbc-news"],
     "error: model 'cnn' (cnn): expected image data, got text (bbc-news)"),
    (["train", "-m", "gru", "--data", "reviews.txt"],
     "error: data: expected one of ['fashion-mnist', 'bbc-news'], a .npz of images or a .csv"),
])
def test_train_and_check_trained_usage_errors(tmp_path, args, message):
    result = onnxtwin(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_default_training_reaches_the_accuracy_targets_with_every_path_agreeing(tmp_path,
                                                                               framework):
    """`onnxtwin train` on the full data: CNN >= 89% on Fashion-MNIST, the text models
    >= 90% on BBC News (Keras: the CNN and the GRU), every path agreeing on every sample."""
    models = [s.name for s in builtins()] if framework == "torch" else ["cnn", "gru"]
    result = onnxtwin("train", "--framework", framework, *(a for m in models for a in ("-m", m)),
                      "--out", str(tmp_path), timeout=3000)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((tmp_path / "report.json").read_text())
    for m in document["models"]:
        accuracy = m["accuracy"]
        target = 0.89 if m["family"] == "cnn" else 0.90
        assert len({p["accuracy"] for p in accuracy["paths"]}) == 1  # to the last sample
        assert min(p["accuracy"] for p in accuracy["paths"]) >= target, (m["name"], accuracy)
        assert all(p["disagreements"] == 0 for p in accuracy["pairs"]), (m["name"], accuracy)
        assert m["passed"], (m["name"], accuracy)


def test_corrupt_training_record_is_one_line(tmp_path):
    (tmp_path / "gru").mkdir()
    (tmp_path / "gru" / "training.json").write_text('{"data": "bbc-news"}')
    with pytest.raises(OnnxtwinError, match=r"training.json: expected a training record, got "
                                            r"KeyError: 'classes'"):
        load_trained(tmp_path / "gru")


def lookup(name: str, logits: np.ndarray) -> FunctionPath:
    """A path whose input `x` holds row numbers of `logits`: its output is those rows."""
    return FunctionPath(PathInfo(name, "python"), lambda x: logits[x], ["x"], ["logits"])


def test_accuracy_verdict_counts_errors_sensitivity_and_disagreements():
    y = np.array([0, 1, 1, 0])
    truth = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    jitter = truth + np.array([[0], [0], [5e-6], [0]])  # sample 2 is sensitive: 5e-6
    shifted = {"exact": truth,
               "sensitive": truth + np.array([[0], [0], [1.5e-5], [0]]),  # 1.5e-5 <= 4 x 5e-6
               "off": truth + np.array([[2e-5], [0], [0], [0]]),  # unexplained
               "flip": np.vstack([truth[:3], [[0.0, 1.5]]]),  # sample 3 now predicts 1
               "nan": np.where(np.arange(2) == 0, np.nan, truth)}

    rows = np.arange(4)
    result = evaluate([lookup(k, v) for k, v in shifted.items()], lookup("oracle", truth),
                      lookup("oracle jittered", jitter), rows, y, 1e-5, "synthetic", batch=3)
    paths = {p.path: p for p in result.paths}
    assert result.sensitive_samples == 1 and result.max_sensitivity == pytest.approx(5e-6)
    assert (paths["exact"].over_tolerance, paths["exact"].unexplained) == (0, 0)
    assert (paths["sensitive"].over_tolerance, paths["sensitive"].unexplained) == (1, 0)
    assert (paths["off"].over_tolerance, paths["off"].unexplained) == (1, 1)
    assert paths["off"].max_ulps == pytest.approx(2e-5 / np.spacing(np.float32(2.0)))  # 84
    assert paths["flip"].accuracy == 0.75 and paths["exact"].accuracy == 1.0
    assert paths["nan"].unexplained == 4 and paths["nan"].max_abs_vs_oracle == np.inf
    pairs = {(p.a, p.b): p for p in result.pairs}
    assert pairs["exact", "flip"].disagreements == 1 and pairs["exact", "flip"].agreement == 0.75
    assert not result.passed
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON
    assert document["paths"][4]["max_abs_vs_oracle"] is None


def test_errors_within_32_ulps_of_a_large_logit_pass():
    truth = np.array([[16.0, 0.0], [0.5, 0.0]])  # ulp(16) = 1.9e-6: 32 ulps = 6.1e-5
    near = truth + np.array([[5e-5], [0]])  # 26 ulps over 1e-5: explained by the scale
    far = truth + np.array([[0], [5e-5]])  # at logit 0.5, 5e-5 is 839 ulps: unexplained

    result = evaluate([lookup("near", near), lookup("far", far)], lookup("oracle", truth),
                      lookup("oracle jittered", truth), np.arange(2), np.array([0, 0]), 1e-5,
                      "synthetic")
    near_path, far_path = result.paths
    assert (near_path.over_tolerance, near_path.unexplained) == (1, 0)
    assert (far_path.over_tolerance, far_path.unexplained) == (1, 1)
