"""Text -> token ids, exactly as at training time; a JSON file that a deployment reads back.

Words are scikit-learn's default tokens (runs of 2+ word characters), lower-cased, stop
words dropped. Id 0 is padding, id 1 an unknown word, ids 2.. the vocabulary in order of
training-split frequency. A text keeps its first `max_len` words and is padded on the left
(the recurrent twins read the final state, so the text must come last). A text without a
word is refused: its row would be all padding, which the Transformer masks entirely (NaN).
"""

from __future__ import annotations

import collections
import json
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path, existing_file, shown

PAD, UNKNOWN = 0, 1
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's CountVectorizer default
WORD = "a word: 2+ letters or digits, not a stop word"
FORMAT = "onnxtwin-tokenizer/1"
MAX_LEN = 2**16


@dataclass(frozen=True)
class Tokenizer:
    """A fitted vocabulary (id 2 first) with the rules that split and pad text."""

    vocabulary: tuple[str, ...]
    max_len: int
    stop_words: frozenset[str] = frozenset()
    pattern: str = TOKEN_PATTERN

    def __post_init__(self) -> None:
        """Check the fields (a tokenizer file is user input), then index the vocabulary."""
        _check_length(self.max_len)
        words = (*self.vocabulary, *self.stop_words, self.pattern)
        if not all(isinstance(w, str) for w in words):
            raise OnnxtwinError("tokenizer: expected the vocabulary, stop words and pattern "
                                "to be strings, got another type among them")
        try:
            object.__setattr__(self, "_regex", re.compile(self.pattern))
        except re.error as e:
            raise OnnxtwinError(f"tokenizer: expected a valid regular expression as pattern, "
                                f"got {shown(self.pattern)} ({e})") from None
        object.__setattr__(self, "_ids", {w: i + 2 for i, w in enumerate(self.vocabulary)})

    @property
    def size(self) -> int:
        """Ids in use, padding and unknown included: a model's vocab must be at least this."""
        return len(self.vocabulary) + 2

    def words(self, text: str) -> list[str]:
        return [w for w in self._regex.findall(text.lower()) if w not in self.stop_words]

    def encode(self, texts: Sequence[str], max_len: int | None = None) -> np.ndarray:
        """int64 [len(texts), max_len]: each text's first max_len ids, padded on the left.
        Every text must hold a word (see the module's docstring)."""
        if isinstance(texts, str):
            raise OnnxtwinError(f"tokenizer: expected a list of texts, got one string "
                                f"{shown(texts)}")
        length = _check_length(max_len or self.max_len)
        out = np.full((len(texts), length), PAD, dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not (words := self.words(text)):
                raise OnnxtwinError(f"tokenizer: expected every text to hold {WORD}, got "
                                    f"texts[{row}] = {shown(text)}")
            ids = [self._ids.get(w, UNKNOWN) for w in words[:length]]
            out[row, length - len(ids):] = ids
        return out

    @classmethod
    def fit(cls, texts: Iterable[str], size: int, max_len: int,
            stop_words: Iterable[str] = (), min_count: int = 2) -> Tokenizer:
        """The `size - 2` most frequent words seen at least `min_count` times (ties by word)."""
        if size < 3:
            raise OnnxtwinError(f"tokenizer: expected a vocabulary size >= 3, got {size}")
        plain = cls((), max_len, frozenset(stop_words))
        counts = collections.Counter(w for t in texts for w in plain.words(t))
        ranked = sorted((w for w, c in counts.items() if c >= min_count),
                        key=lambda w: (-counts[w], w))
        return cls(tuple(ranked[: size - 2]), max_len, plain.stop_words)

    def save(self, path: str | Path) -> Path:
        document = {"format": FORMAT, **asdict(self), "stop_words": sorted(self.stop_words)}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = existing_file(Path(path), "a tokenizer file")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.pop("format") != FORMAT:
                raise ValueError("another format")
            fields = (tuple(document["vocabulary"]), document["max_len"],
                      frozenset(document["stop_words"]), document["pattern"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise OnnxtwinError(f"tokenizer file {path}: expected an {FORMAT} JSON document, "
                                f"got {type(e).__name__}: {e}") from None
        try:
            return cls(*fields)
        except OnnxtwinError as e:
            raise OnnxtwinError(f"tokenizer file {path}: {e}") from None


def _check_length(length: object) -> int:
    """A row length (max_len): an int in [1, MAX_LEN], so a row's size is bounded."""
    if not isinstance(length, numbers.Integral) or isinstance(length, bool) or \
            not 1 <= length <= MAX_LEN:
        raise OnnxtwinError(f"tokenizer: expected max_len to be an int in [1, {MAX_LEN}], got "
                            f"{shown(length)}")
    return int(length)
