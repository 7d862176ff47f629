"""Train one twin on a dataset (Adam, cross-entropy, seeded), then hand its weights to the other.

    from onnxtwin.builders.datasets import load_dataset
    from onnxtwin.builders.training import train
    data = load_dataset("fashion-mnist")
    trained = train("cnn", data, framework="torch")   # or "keras"
    trained.twins.keras.run(x)                        # the other twin holds the same weights
    trained.save("onnxtwin-trained/cnn")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from onnxtwin.builders import grids
from onnxtwin.builders.datasets import Dataset, default_data, load_dataset
from onnxtwin.builders.registry import get_spec
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.builders.twins import SOURCES, Twins, from_keras, from_weights, load_twins
from onnxtwin.builders.weights import torch_state
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import write_json
from onnxtwin.runtime.tokenizer import PAD, UNKNOWN, Tokenizer

TRAINING_FILE, TOKENIZER_FILE = "training.json", "tokenizer.json"


@dataclass(frozen=True)
class Recipe:
    """Adam at `learning_rate`, gradients clipped to a global norm; for text, a fraction
    `word_dropout` of the words of each training epoch replaced by the unknown id."""

    epochs: int
    batch_size: int
    learning_rate: float
    clip_norm: float = 1.0
    word_dropout: float = 0.0


RECIPES = {"images": Recipe(epochs=5, batch_size=128, learning_rate=2e-3),
           "text": Recipe(epochs=20, batch_size=32, learning_rate=2e-3, word_dropout=0.4)}


@dataclass(frozen=True)
class Epoch:
    """Training-split mean loss and accuracy of one epoch, and its wall time."""

    epoch: int
    loss: float
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class Trained:
    """Trained twins with the data that made them: name, classes, split seed, tokenizer."""

    twins: Twins
    data: str
    classes: tuple[str, ...]
    seed: int
    framework: str
    recipe: Recipe
    history: tuple[Epoch, ...]
    samples: int
    """Training samples used (all of the split, or a subset)."""
    tokenizer: Tokenizer | None = None

    def dataset(self) -> Dataset:
        """The data it was trained on, split and tokenized exactly as in training."""
        return load_dataset(self.data, seed=self.seed, tokenizer=self.tokenizer)

    def save(self, folder: str | Path) -> Path:
        """The twins' files plus training.json (and tokenizer.json for text models)."""
        folder = self.twins.save(folder)
        if self.tokenizer:
            self.tokenizer.save(folder / TOKENIZER_FILE)
        record = {"data": self.data, "classes": list(self.classes), "seed": self.seed,
                  "framework": self.framework, "samples": self.samples,
                  "recipe": asdict(self.recipe),
                  "history": [asdict(e) for e in self.history]}
        write_json(folder / TRAINING_FILE, record)
        return folder


def prepare(spec: ModelSpec, data: str | None = None, limit: int | None = None,
            epochs: int | None = None, seed: int = 0) -> tuple[Dataset, Recipe]:
    """The dataset a spec trains on (`data`, else its default), cut to `limit` training
    samples (stratified; the test set stays whole), and its recipe with `epochs` if given."""
    grids.check_seed(seed)
    dataset = load_dataset(data or default_data(spec), vocab=spec.signature.inputs[0].vocab,
                           seed=seed)
    if limit:
        dataset = dataset.subset(limit, len(dataset.y_test), seed)
    recipe = RECIPES[dataset.kind]
    return dataset, replace(recipe, epochs=epochs) if epochs else recipe


def load_trained(folder: str | Path) -> Trained:
    """What `Trained.save` wrote."""
    folder = Path(folder)
    if not (folder / TRAINING_FILE).is_file():
        raise OnnxtwinError(f"trained model: expected {folder / TRAINING_FILE} (written by "
                            f"`onnxtwin train`), got no such file")
    try:
        record = json.loads((folder / TRAINING_FILE).read_text())
        fields = (str(record["data"]), tuple(record["classes"]), grids.check_seed(record["seed"]),
                  record["framework"], Recipe(**record["recipe"]),
                  tuple(Epoch(**e) for e in record["history"]), int(record["samples"]))
    except (ValueError, KeyError, TypeError, OnnxtwinError) as e:
        raise OnnxtwinError(f"{folder / TRAINING_FILE}: expected a training record, got "
                            f"{type(e).__name__}: {e}") from None
    tokenizer = (Tokenizer.load(folder / TOKENIZER_FILE)
                 if (folder / TOKENIZER_FILE).exists() else None)
    twins = load_twins(folder)
    vocab = twins.spec.signature.inputs[0].vocab
    if (tokenizer is None) != (vocab is None) or (tokenizer and tokenizer.size > vocab):
        raise OnnxtwinError(f"{folder}: expected a {TOKENIZER_FILE} of at most vocab={vocab} "
                            f"ids for a model that reads tokens and none otherwise, got "
                            f"{tokenizer.size if tokenizer else 'none'}")
    return Trained(twins, *fields, tokenizer)


def spec_for(model: str | ModelSpec, data: Dataset) -> ModelSpec:
    """The model's spec with one output per class, checked against the data's inputs."""
    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    expected = spec.signature.inputs[0]
    tokens = expected.vocab is not None
    if tokens != (data.kind == "text"):
        raise OnnxtwinError(f"model {spec.name!r} ({spec.family}): expected "
                            f"{'text' if tokens else 'image'} data, got {data.kind} "
                            f"({data.name})")
    if tokens and data.tokenizer.size > expected.vocab:
        raise OnnxtwinError(f"model {spec.name!r}: expected a tokenizer of at most vocab="
                            f"{expected.vocab} ids, got {data.tokenizer.size}")
    if not tokens and tuple(data.x_train.shape[1:]) != tuple(expected.shape[1:]):
        raise OnnxtwinError(f"model {spec.name!r}: expected images of shape "
                            f"{list(expected.shape[1:])}, got {list(data.x_train.shape[1:])}")
    return replace(spec, classes=len(data.classes))


def train(model: str | ModelSpec, data: Dataset, framework: str = "torch",
          recipe: Recipe | None = None, seed: int = 0,
          on_batch: Callable[[int, int], None] = lambda done, total: None,
          on_epoch: Callable[[Epoch], None] = lambda epoch: None) -> Trained:
    """Train `framework`'s twin from a seeded initialisation; the other twin gets its weights.

    `on_batch(done, total)` follows the batches of an epoch; `on_epoch` gets each Epoch.
    The same model, data, recipe and seed give the same weights.
    """
    if framework not in SOURCES:
        raise OnnxtwinError(f"framework: expected one of {SOURCES}, got {framework!r}")
    grids.check_seed(seed)
    spec = spec_for(model, data)
    recipe = recipe or RECIPES[data.kind]
    fit = _fit_torch if framework == "torch" else _fit_keras
    twins, history = fit(spec, data, recipe, seed, on_batch, on_epoch)
    return Trained(twins, data.name, data.classes, seed, framework, recipe, tuple(history),
                   len(data.y_train), data.tokenizer)


def epoch_inputs(data: Dataset, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """One epoch's training inputs: for text, with words dropped to the unknown id."""
    if not recipe.word_dropout:
        return data.x_train
    dropped = (rng.random(data.x_train.shape) < recipe.word_dropout) & (data.x_train != PAD)
    return np.where(dropped, UNKNOWN, data.x_train)


def _fit_torch(spec, data, recipe, seed, on_batch, on_epoch) -> tuple[Twins, list[Epoch]]:
    import torch
    import torch.nn.functional as F

    y, rng = torch.from_numpy(data.y_train), np.random.default_rng(seed)
    batches = -(-len(y) // recipe.batch_size)
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.torch_model()
        spec.init_for_training(model)
        optimiser = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for epoch in range(1, recipe.epochs + 1):
            start, loss_sum, correct = time.perf_counter(), 0.0, 0
            x = torch.from_numpy(epoch_inputs(data, recipe, rng))
            for i, rows in enumerate(torch.randperm(len(y), generator=order)
                                     .split(recipe.batch_size)):
                logits = model(x[rows])
                loss = F.cross_entropy(logits, y[rows])
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
                optimiser.step()
                loss_sum += loss.item() * len(rows)
                correct += (logits.argmax(1) == y[rows]).sum().item()
                on_batch(i + 1, batches)
            history.append(Epoch(epoch, loss_sum / len(y), correct / len(y),
                                 time.perf_counter() - start))
            on_epoch(history[-1])
    return from_weights(spec, torch_state(model), "trained torch twin"), history


def _fit_keras(spec, data, recipe, seed, on_batch, on_epoch) -> tuple[Twins, list[Epoch]]:
    from onnxtwin.builders.keras_support import keras, seeded

    seeded(seed)
    rng = np.random.default_rng(seed)
    model = spec.keras_model()
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate, global_clipnorm=recipe.clip_norm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    batches = -(-len(data.y_train) // recipe.batch_size)
    history: list[Epoch] = []

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            on_batch(batch + 1, batches)

    for epoch in range(1, recipe.epochs + 1):
        start = time.perf_counter()
        logs = model.fit(epoch_inputs(data, recipe, rng), data.y_train,
                         batch_size=recipe.batch_size, epochs=epoch, initial_epoch=epoch - 1,
                         shuffle=True, verbose=0, callbacks=[Progress()]).history
        history.append(Epoch(epoch, float(logs["loss"][-1]), float(logs["accuracy"][-1]),
                             time.perf_counter() - start))
        on_epoch(history[-1])
    return from_keras(spec, model), history
