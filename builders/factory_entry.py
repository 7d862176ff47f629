"""A user's own model as an entry: a torch factory, a Keras factory, or a pair of them.

    [models.my-cnn]
    torch = "my_models.py:build_torch"     # FILE.py:CALLABLE (relative to the TOML file)
    keras = "my_models.py:build_keras"     #   or package.module:CALLABLE
    source = "torch"                       # whose weights the other side receives
    weights = "my_cnn.safetensors"         # optional: the source side's weights
    inputs = [{ name = "image", dtype = "float32", shape = ["batch", 3, 32, 32],
                channels_last = true }]
    outputs = ["logits"]
    dims = { batch = [1, 7] }

A pair's weights go from `source` to the other model through the layers matched by
onnxtwin.builders.matching; one model is exported and checked against itself and its
float64 run. The output dtypes and shapes are found by running the source model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxtwin.builders.entries import EntrySpec, failed, file_hash, parse_dims, refuse
from onnxtwin.builders.signature import MAX_WIDTH, Signature, TensorSpec
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import safe_name

SIDES = ("torch", "keras")
KEYS = frozenset({*SIDES, "source", "weights", "inputs", "outputs", "dims", "example"})
INPUT_KEYS = frozenset({"name", "dtype", "shape", "range", "channels_last"})
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
MAX_RANK = 8
DEFAULT_INT_RANGE = (0, 10)
"""Where integer inputs without a declared `range` are drawn: ids valid for any table."""
Factory = Callable[[], Any]


@dataclass(frozen=True)
class FactorySpec(EntrySpec):
    """A user's torch and/or Keras model, built by factories; see the module docstring."""

    family = "user"
    factories: Mapping[str, str] = field(default_factory=dict)
    """side -> the factory as written ("file.py:fn", "package.module:fn", or a repr)."""
    source: str = "torch"
    weights: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    output_names: tuple[str, ...] = ()
    example: tuple[tuple[str, int], ...] = ()
    code: str = ""
    """sha256 of the factories' source files: a changed model never hits a stale export."""
    callables: Mapping[str, Factory] = field(default_factory=dict, compare=False, hash=False,
                                             repr=False)

    def __hash__(self) -> int:
        return hash((self.name, self.source, self.weights, self.inputs, self.output_names,
                     self.grid, self.code, tuple(sorted(self.factories.items()))))

    @property
    def frameworks(self) -> tuple[str, ...]:
        return tuple(s for s in SIDES if s in self.callables)

    @property
    def default_source(self) -> str:
        return self.source

    @property
    def signature(self) -> Signature:
        return Signature(self.inputs, self._memo("outputs", _outputs))

    @property
    def input_signature(self) -> Signature:
        """The inputs alone: what running a model needs (the outputs are found by running)."""
        return Signature(self.inputs, ())

    @property
    def input_dims(self) -> tuple[str, ...]:
        return self.input_signature.dims

    def example_dims(self) -> dict[str, int]:
        return super().example_dims(dict(self.example))

    def torch_model(self):
        """A new torch model from the factory, in eval mode."""
        import torch

        return self._make("torch", torch.nn.Module, "a torch.nn.Module").eval()

    def keras_model(self):
        """A new Keras model from the factory, built by one call on the example inputs (a
        subclassed model has no weights before its first call)."""
        from onnxtwin.builders.keras_support import keras

        model = self._make("keras", keras.Model, "a keras.Model")
        try:
            model(keras_args(self.input_signature, self.sample(self.example_dims())),
                  training=False)
        except Exception as e:  # the user's model: any error, said in one line
            raise failed(self.name, f"the keras model to take the declared inputs at "
                         f"{self.example_dims()}", e) from None
        return model

    def match_layers(self, torch_model, keras_model) -> list:
        from onnxtwin.builders.matching import match_layers

        x = self.sample(self.example_dims())
        torch_args = [x[t.name] for t in self.inputs]
        try:
            return match_layers(torch_model, keras_model, torch_args,
                                keras_args(self.input_signature, x, listed=True))
        except OnnxtwinError as e:
            raise OnnxtwinError(f"model {self.name!r}: {e}") from None

    def load_weights(self, model):
        """The source model with the entry's `weights` file loaded: torch safetensors (names
        and shapes checked), Keras .weights.h5 or .keras."""
        if self.weights is None:
            return model
        from onnxtwin.builders.weights import load_torch_state, read_weights

        what = f"model {self.name!r}: weights {self.weights}"
        side = "torch" if _is_torch(model) else "keras"
        if side != self.source:
            raise refuse(self.name, f"source {self.source!r}, whose weights file it gives",
                         side)
        if self.source == "torch":
            load_torch_state(model, read_weights(self.weights)[0], what)
            return model
        try:
            model.load_weights(self.weights)
        except Exception as e:  # Keras raises several types for a wrong file
            raise failed(self.name, f"Keras weights of this model in {self.weights} "
                         "(.weights.h5 or .keras)", e) from None
        return model

    def keras_float64(self, model):
        from onnxtwin.builders.keras_support import float64_twin

        args = keras_args(self.input_signature, self.sample(self.example_dims()))
        try:
            twin = float64_twin(self.callables["keras"], model, args)
        except OnnxtwinError:
            raise
        except Exception as e:  # the user's factory under a float64 policy
            raise failed(self.name, "the keras factory to build and run the model in float64 "
                         "(its oracle)", e) from None
        if twin is model:  # entry_from_models: the factory returns the object itself
            raise refuse(self.name, "a keras factory that builds a new model (its float64 "
                         "oracle is the model rebuilt in float64), or a torch model as well",
                         "a model object")
        return twin

    def validate(self) -> None:
        self._memo("validated", _validate)

    def _memo(self, key: str, compute: Callable[[FactorySpec], Any]) -> Any:
        """`compute(self)` once per spec object: equal specs of different model objects
        (two `entry_from_models` calls) must not share a result, nor keep models alive."""
        memo = self.__dict__.setdefault("_memos", {})
        if key not in memo:
            memo[key] = compute(self)
        return memo[key]

    def sample(self, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        from onnxtwin.builders.inputs import sample_inputs

        return sample_inputs(self.input_signature, dims, seed=seed)

    def described(self) -> str:
        sides = ", ".join(f"{side} {ref}" for side, ref in self.factories.items())
        weights = f", weights {self.weights}" if self.weights else ""
        return f"{sides}, source {self.source}{weights}, {super().described()}"

    def hyperparameters(self) -> dict[str, object]:
        weights = None if self.weights is None else {  # what, not where: no local path
            "file": Path(self.weights).name,
            "sha256": self._memo("weights_sha256", lambda s: file_hash(Path(s.weights)))}
        return {"factories": dict(self.factories), "source": self.source,
                "weights": weights, "code_sha256": self.code,
                "inputs": [_input_record(t) for t in self.inputs],
                "outputs": list(self.output_names), **super().hyperparameters()}

    def _make(self, side: str, kind: type, expected: str):
        if side not in self.callables:
            raise refuse(self.name, f"a {side} factory", "none")
        factory = self.callables[side]
        try:
            model = factory()
        except Exception as e:  # the user's factory: any error, said in one line
            raise failed(self.name, f"the {side} factory {self.factories[side]} to return "
                         f"{expected}", e) from None
        if not isinstance(model, kind):
            raise refuse(self.name, f"the {side} factory {self.factories[side]} to return "
                         f"{expected}", type(model).__name__)
        return model


def _validate(spec: FactorySpec) -> None:
    """Make each side's model, match a pair's layers, and run each model at every point of
    the grid (once per spec): a factory that fails, layers that cannot be matched or a
    declared input a model rejects is one line naming the entry, before anything is
    built, exported or written."""
    from onnxtwin.builders.paths import KerasPath, TorchPath

    names = [t.name for t in spec.inputs]
    models = {side: spec.torch_model() if side == "torch" else spec.keras_model()
              for side in spec.frameworks}
    for side, model in models.items():
        path = TorchPath(model, names, ()) if side == "torch" else KerasPath(
            model, names, (), channels_last=spec.input_signature.channels_last)
        for dims in spec.matrix_points():
            try:
                path.run(spec.sample(dims))
            except OnnxtwinError as e:
                raise failed(spec.name, f"the {side} model to take the declared inputs at "
                             f"{dims}", e) from None
    if len(models) == 2:  # layers that cannot be matched: refused before any work too
        spec.match_layers(models["torch"], models["keras"])
    spec.signature  # noqa: B018 - the outputs, found by running: refused here if they cannot be


def _is_torch(model) -> bool:
    import torch

    return isinstance(model, torch.nn.Module)


def keras_args(signature: Signature, inputs: Mapping[str, np.ndarray], listed: bool = False):
    """The Keras model's argument: the inputs in order (channels-last ones moved), one array
    alone unless `listed`."""
    from onnxtwin.builders.paths import keras_layout

    args = keras_layout([inputs[n] for n in signature.input_names], signature.channels_last)
    return args if listed or len(args) > 1 else args[0]


def _outputs(spec: FactorySpec) -> tuple[TensorSpec, ...]:
    """Output dtypes and shapes, from the source model run at the example and at a second
    point where every dim differs (the largest other size of its grid): an axis that
    follows a dim is named for it, one that changes otherwise is named NAME_AXIS, one that
    stays is fixed."""
    from onnxtwin.builders.paths import KerasPath, TorchPath

    first = spec.example_dims()
    grid = dict(spec.grid)  # a declared size where one differs: a model may take no other
    second = {d: max((v for v in grid.get(d, ()) if v != size), default=size + 1)
              for d, size in first.items()}
    side = spec.source if spec.source in spec.frameworks else spec.frameworks[0]
    model = spec.torch_model() if side == "torch" else spec.keras_model()
    names = [t.name for t in spec.inputs]
    path = TorchPath(model, names, spec.output_names) if side == "torch" else \
        KerasPath(model, names, spec.output_names,
                  channels_last=spec.input_signature.channels_last)
    runs = []
    for dims in (first, second):
        try:
            runs.append(path.run(spec.sample(dims)))
        except OnnxtwinError as e:
            raise failed(spec.name, f"the {side} model to take the declared inputs at {dims}",
                         e) from None
    specs = []
    for name, a in runs[0].items():
        b = runs[1][name]
        if a.ndim != b.ndim:
            raise refuse(spec.name, f"output {name!r} to keep its rank as dims grow",
                         f"{a.shape} then {b.shape}")
        shape: list[int | str] = []
        for axis, (m, n) in enumerate(zip(a.shape, b.shape, strict=True)):
            dim = next((d for d in first if first[d] == m and second[d] == n), None)
            shape.append(m if m == n else dim or f"{name}_{axis}")
        specs.append(TensorSpec(name, a.dtype.name, tuple(shape)))
    return tuple(specs)


def _input_record(t: TensorSpec) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
            "range": None if t.range is None else list(t.range),
            "channels_last": t.channels_last}


# -- parsing ------------------------------------------------------------------------------

def factory_spec(name: str, table: Mapping[str, object], base: Path) -> FactorySpec:
    """The spec of one `[models.NAME]` table with `torch` and/or `keras` factories."""
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise refuse(name, f"keys among {sorted(KEYS)}", unknown)
    sides = [s for s in SIDES if s in table]
    refs = {s: _text(name, s, table[s]) for s in sides}
    source = table.get("source", sides[0])
    if source not in sides:
        raise refuse(name, f"source to be one of the entry's factories {sides}", source)
    inputs = parse_inputs(name, table.get("inputs"))
    outputs = parse_outputs(name, table.get("outputs"))
    signature_dims = Signature(inputs, ()).dims
    grid = parse_dims(name, table.get("dims"), signature_dims)
    example = parse_example(name, table.get("example"), signature_dims)
    weights = None
    if "weights" in table:
        weights = str(_existing(name, "weights", base / _text(name, "weights",
                                                             table["weights"])))
    callables, files = {}, []
    for side, ref in refs.items():
        callables[side], origin = load_factory(name, side, ref, base)
        files.append(origin)
    code = "".join(file_hash(f) for f in files if f is not None)
    return FactorySpec(name=name, grid=grid, factories=refs, source=source, weights=weights,
                       inputs=inputs, output_names=outputs, example=example, code=code,
                       callables=callables)


def parse_inputs(entry: str, value: object) -> tuple[TensorSpec, ...]:
    """`inputs = [{name, dtype, shape, range?, channels_last?}, ...]`, each checked."""
    if not isinstance(value, list) or not value:
        raise refuse(entry, "inputs as a non-empty list of {name, dtype, shape} tables", value)
    specs = []
    for i, item in enumerate(value):
        where = f"inputs[{i}]"
        if not isinstance(item, Mapping) or not {"name", "dtype", "shape"} <= set(item):
            raise refuse(entry, f"{where} as a table with name, dtype and shape", item)
        unknown = sorted(set(item) - INPUT_KEYS)
        if unknown:
            raise refuse(entry, f"{where} keys among {sorted(INPUT_KEYS)}", unknown)
        name = safe_name(item["name"], f"model {entry!r}: {where}.name")
        dtype, shape = item["dtype"], item["shape"]
        if dtype not in DTYPES:
            raise refuse(entry, f"{where}.dtype one of {list(DTYPES)}", dtype)
        if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK or not all(
                (type(d) is int and 1 <= d <= MAX_WIDTH) or (isinstance(d, str) and d)
                for d in shape)):
            raise refuse(entry, f"{where}.shape as 1 to {MAX_RANK} sizes in [1, {MAX_WIDTH}] "
                         "or dim names", shape)
        for d in shape:
            if isinstance(d, str):
                safe_name(d, f"model {entry!r}: {where}.shape dim name")
        channels_last = item.get("channels_last", False)
        if type(channels_last) is not bool or (channels_last and len(shape) < 3):
            raise refuse(entry, f"{where}.channels_last as true or false (true needs rank "
                         ">= 3)", channels_last)
        specs.append(TensorSpec(name, dtype, tuple(shape),
                                range=_range(entry, where, item.get("range"), dtype),
                                channels_last=channels_last))
    if len({t.name for t in specs}) != len(specs):
        raise refuse(entry, "distinct input names", [t.name for t in specs])
    return tuple(specs)


def _range(entry: str, where: str, value: object, dtype: str) -> tuple[float, float] | None:
    kind = np.dtype(dtype).kind
    if value is None:
        return DEFAULT_INT_RANGE if kind in "iu" else None
    if (not isinstance(value, list) or len(value) != 2
            or not all(type(v) in (int, float) and np.isfinite(v) for v in value)
            or not value[0] < value[1] or (kind in "iu" and not all(type(v) is int
                                                                      for v in value))):
        raise refuse(entry, f"{where}.range as [low, high) with low < high"
                     + (" (ints)" if kind in "iu" else ""), value)
    if kind in "iu":
        info = np.iinfo(dtype)
        if value[0] < info.min or value[1] - 1 > info.max:
            raise refuse(entry, f"{where}.range within {dtype}", value)
    return (value[0], value[1])


def parse_outputs(entry: str, value: object) -> tuple[str, ...]:
    """`outputs = ["logits", ...]`: names in order (absent: output_0, output_1, ...)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise refuse(entry, "outputs as a non-empty list of names", value)
    for v in value:
        safe_name(v, f"model {entry!r}: output name")
    if len(set(value)) != len(value):
        raise refuse(entry, "distinct output names", value)
    return tuple(value)


def parse_example(entry: str, value: object, dims: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """`example = {dim = size}`: where the torch exporter traces (sizes >= 2, distinct)."""
    if value is None:
        return ()
    if (not isinstance(value, Mapping) or not set(value) <= set(dims)
            or not all(type(v) is int and 2 <= v <= 2**16 for v in value.values())
            or len(set(value.values())) != len(value)):
        raise refuse(entry, f"example as {{dim = size >= 2}} over the dims {list(dims)}, "
                     "sizes distinct", value)
    return tuple(value.items())


def _text(entry: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise refuse(entry, f"{key} as a non-empty string", value)
    return value


def _existing(entry: str, key: str, path: Path) -> Path:
    if not path.is_file():
        raise refuse(entry, f"{key} to name an existing file", str(path))
    return path


def load_factory(entry: str, side: str, ref: str, base: Path) -> tuple[Factory, Path | None]:
    """Import `FILE.py:CALLABLE` (FILE relative to `base`) or `package.module:CALLABLE`;
    return the callable and the file that defines it (for the code hash)."""
    module_part, sep, attribute = ref.rpartition(":")
    if not sep or not module_part or not attribute.isidentifier():
        raise refuse(entry, f"{side} as FILE.py:CALLABLE or package.module:CALLABLE", ref)
    expected = f"the {side} factory {ref} to import"
    try:
        if module_part.endswith(".py"):
            file = _existing(entry, side, (base / module_part).resolve())
            module = _import_file(file)
        else:
            module = importlib.import_module(module_part)
            file = Path(module.__file__) if getattr(module, "__file__", None) else None
    except OnnxtwinError:
        raise
    except Exception as e:  # the user's module: any error (SyntaxError too), one line
        raise failed(entry, expected, e) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise refuse(entry, f"{expected} a callable {attribute!r}",
                     "nothing by that name" if factory is None else type(factory).__name__)
    return factory, file


def _import_file(file: Path):
    """Import a Python file as a module of its own; the same file is imported once. Its
    folder joins sys.path (as `python file.py` would put it), so the file and its
    factories, when called later, can import their neighbours."""
    key = hashlib.sha256(f"{file}\0{file_hash(file)}".encode()).hexdigest()[:16]
    name = f"onnxtwin_user_{key}"  # this file, with this content
    if name in sys.modules:
        return sys.modules[name]
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# -- from Python ---------------------------------------------------------------------------

def entry_from_models(torch_model=None, keras_model=None, *,
                      inputs: Sequence[Mapping[str, object]], outputs: Sequence[str] = (),
                      dims: Mapping[str, Sequence[int]] | None = None, source: str = "torch",
                      name: str = "my-model",
                      example: Mapping[str, int] | None = None) -> FactorySpec:
    """An entry around model objects already built: what a TOML table says, from Python.

        spec = entry_from_models(torch_model, keras_model, source="torch",
            inputs=[{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32],
                     "channels_last": True}], outputs=["logits"], dims={"batch": [1, 7]})
        twins = build_twins(spec)        # the Keras model now holds the torch weights

    The twins are these very objects: building them moves the weights into the other one.
    """
    given = {side: m for side, m in (("torch", torch_model), ("keras", keras_model))
             if m is not None}
    if not given:
        raise refuse(name, "a torch model, a Keras model, or both", "neither")
    table = {"inputs": [dict(t) for t in inputs], "outputs": list(outputs) or None,
             "dims": None if dims is None else {d: list(v) for d, v in dims.items()}}
    if source not in given:
        raise refuse(name, f"source among the models given {list(given)}", source)
    inputs_ = parse_inputs(name, table["inputs"])
    signature_dims = Signature(inputs_, ()).dims
    grid = parse_dims(name, table["dims"], signature_dims)
    return FactorySpec(
        name=safe_name(name, "model name"), grid=grid,
        example=parse_example(name, None if example is None else dict(example), signature_dims),
        factories={s: f"{type(m).__module__}.{type(m).__qualname__}" for s, m in given.items()},
        source=source, inputs=inputs_,
        output_names=parse_outputs(name, table["outputs"]),
        code=f"{_source_hash(given.values())}-{uuid.uuid4().hex}",  # these objects only
        callables={s: (lambda m=m: m) for s, m in given.items()})


def _source_hash(models) -> str:
    """sha256 of the files that define the models' classes ("unhashed" when one cannot be
    read); entries around objects add a random part as well, so two calls never share a
    cached export: the objects' weights and code are theirs to change between calls."""
    import inspect

    digest = hashlib.sha256()
    for model in models:
        try:
            digest.update(Path(inspect.getsourcefile(type(model))).read_bytes())
        except (TypeError, OSError):
            return "unhashed"
    return digest.hexdigest()
