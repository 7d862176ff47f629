"""Match the parameterised layers of a user's torch model and Keras model by running both.

Each model runs once on sample inputs; the first call of every parameterised layer is
recorded in call order on each side (torch: forward hooks; Keras: each layer's `call`
wrapped, so Sequential, functional and subclassed models and nested layers all work).
The two lists pair one to one (a torch LSTM/GRU of num_layers layers with as many Keras
layers); builders.layer_pairs checks each pair and makes its LayerMaps, at the real
torch state-dict names and Keras variable paths, so builders.weights moves weights either
way unchanged. The capture helpers here (hooks, call wrapping) serve localisation too.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from onnxtwin.builders import layers
from onnxtwin.builders.layer_pairs import PAIRS, Call, Pair, Shape, Unit
from onnxtwin.builders.layers import LayerMap
from onnxtwin.runtime.errors import OnnxtwinError, cause

TORCH_KINDS = (("conv1d", "Conv1d"), ("conv2d", "Conv2d"), ("dense", "Linear"),
               ("embedding", "Embedding"), ("batchnorm", "BatchNorm1d"),
               ("batchnorm", "BatchNorm2d"), ("layernorm", "LayerNorm"), ("lstm", "LSTM"),
               ("gru", "GRU"), ("attention", "MultiheadAttention"))
"""(kind, torch.nn class): the torch modules matched; a subclass counts as its base."""
KERAS_KINDS = (("conv1d", "Conv1D"), ("conv2d", "Conv2D"), ("dense", "Dense"),
               ("embedding", "Embedding"), ("batchnorm", "BatchNormalization"),
               ("layernorm", "LayerNormalization"), ("lstm", "LSTM"), ("gru", "GRU"),
               ("attention", "MultiHeadAttention"))
"""(kind, keras.layers class); a Bidirectional layer has its wrapped layer's kind."""
SUPPORTED = "Conv1d, Conv2d, Linear, Embedding, BatchNorm1d/2d, LayerNorm, LSTM, GRU, " \
            "MultiheadAttention and their Keras counterparts"


def match_layers(torch_model, keras_model, torch_args: Sequence[np.ndarray],
                 keras_args: Sequence[np.ndarray]) -> list[LayerMap]:
    """The LayerMaps between a torch model and a Keras model of the same network, in call
    order, found by running each once on its sample inputs; OnnxtwinError (one line, naming
    both layers) where the layers cannot be matched."""
    torch_calls, torch_units = _torch_side(torch_model, torch_args)
    keras_calls, keras_units = _keras_side(keras_model, keras_args)
    _same_count(torch_units, keras_units)
    maps = []
    for i, (t, k) in enumerate(zip(torch_units, keras_units, strict=True), start=1):
        pair = Pair(i, t, k, torch_calls, keras_calls)
        pair.require(t.kind == k.kind, "the same kind of layer")
        maps += PAIRS[t.kind](pair)
    _covered(maps, torch_model.state_dict(), [v.path for v in keras_model.weights])
    return maps


# -- running both sides ------------------------------------------------------------------

def _shape(value: Any) -> Shape | None:
    """The shape of a tensor, or of the first tensor in a tuple or list."""
    if hasattr(value, "shape"):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, list | tuple):
        return next((s for s in map(_shape, value) if s is not None), None)
    return None


@contextmanager
def torch_hooks(modules: Iterable, before: Callable, after: Callable) -> Iterator[None]:
    """before(module, args, kwargs) and after(module, output) around every forward of
    `modules`; the hooks are removed on exit."""
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(m.register_forward_hook(lambda mod, _args, out: after(mod, out)))
        yield
    finally:
        for h in handles:
            h.remove()


def run_torch(model, args: Sequence[np.ndarray]) -> None:
    """One forward in eval mode with gradients enabled (nn.TransformerEncoderLayer's fused
    fast path would skip its submodules' hooks); the modules' modes are restored."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            model(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args))
    except Exception as e:  # the user's model: one line
        raise OnnxtwinError(f"torch model: expected it to run on the sample inputs, got "
                            f"{type(e).__name__}: {cause(e)}") from None
    finally:
        for m, mode in modes:
            m.training = mode


_ABSENT = object()


@contextmanager
def keras_calls(model_layers: Iterable, before: Callable, after: Callable) -> Iterator[None]:
    """before(layer, args) and after(layer, output) around every call of each layer: its
    `call` replaced by an instance attribute, removed on exit. Works wherever the layer is
    called from (functional graph, Sequential, a subclassed model's own code)."""
    wrapped = []

    def wrap(layer, call):
        @functools.wraps(call)
        def recorded(*args, **kwargs):
            before(layer, args, kwargs)
            output = call(*args, **kwargs)
            after(layer, output)
            return output
        return recorded

    try:
        for layer in model_layers:
            wrapped.append((layer, layer.__dict__.get("call", _ABSENT)))
            object.__setattr__(layer, "call", wrap(layer, layer.call))
        yield
    finally:
        for layer, previous in reversed(wrapped):
            if previous is _ABSENT:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


def run_keras(model, args: Sequence[np.ndarray]) -> None:
    """One eager call in inference mode (one array alone, several as a list)."""
    try:
        model(args[0] if len(args) == 1 else list(args), training=False)
    except Exception as e:  # the user's model: one line
        raise OnnxtwinError(f"keras model: expected it to run on the sample inputs, got "
                            f"{type(e).__name__}: {cause(e)}") from None


def keras_key(layer) -> str:
    """How a LayerMap names a Keras layer: its path, else its name."""
    return getattr(layer, "path", None) or layer.name


def keras_layers(model, keep_inside: Callable[[Any], bool] = lambda _: True) -> list:
    """Every layer inside `model` (depth first, each once), not descending into a layer for
    which keep_inside is False."""
    found: dict[int, Any] = {}

    def visit(layer):  # _flatten_layers is private Keras API: what Model.layers uses
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if id(child) not in found:
                found[id(child)] = child
                if keep_inside(child):
                    visit(child)

    visit(model)
    return list(found.values())


def _recorder(calls: dict[int, Call], clock: Iterator[int], name: Callable[[Any], str],
              weighted: Callable[[Any], bool]) -> tuple[Callable, Callable]:
    """before/after callbacks that keep each object's first call in `calls`."""
    def before(obj, args, kwargs=None):
        if id(obj) not in calls:
            first = _shape(args) or _shape(list((kwargs or {}).values()))
            calls[id(obj)] = Call(name(obj), obj, next(clock), input=first,
                                  weighted=weighted(obj))

    def after(obj, output):
        call = calls[id(obj)]
        if call.end < 0:
            call.end, call.output = next(clock), _shape(output)

    return before, after


def _inputs(args: Sequence[np.ndarray]) -> list[Call]:
    return [Call(f"input {i}", None, 0, 0, output=tuple(np.shape(a)))
            for i, a in enumerate(args)]


def _torch_kind(module) -> tuple[str, str] | None:
    """(kind, torch class name) of a matched module, else None."""
    import torch

    return next(((kind, cls) for kind, cls in TORCH_KINDS
                 if isinstance(module, getattr(torch.nn, cls))), None)


def _keras_kind(layer) -> tuple[str, str] | None:
    """(kind, label) of a matched Keras layer, else None."""
    from onnxtwin.builders.keras_support import keras

    if isinstance(layer, keras.layers.Bidirectional):
        inner = _keras_kind(layer.forward_layer)
        return None if inner is None or inner[0] not in ("lstm", "gru") else \
            (inner[0], f"Bidirectional({inner[1]})")
    return next(((kind, cls) for kind, cls in KERAS_KINDS
                 if isinstance(layer, getattr(keras.layers, cls))), None)


def _torch_side(model, args: Sequence[np.ndarray]) -> tuple[list[Call], list[Unit]]:
    """All calls of the torch run (inputs first) and its matched modules as units."""
    names = {id(m): n for n, m in model.named_modules()}
    matched: dict[str, Any] = {}
    for name, module in model.named_modules():
        if not any(_inside(name, p) for p in matched) and _torch_kind(module):
            matched[name] = module
    modules = [m for n, m in model.named_modules() if not any(_inside(n, p) for p in matched)]
    _refuse_unsupported_torch(model, matched)
    calls: dict[int, Call] = {}
    before, after = _recorder(calls, itertools.count(1), lambda m: names[id(m)],
                              lambda m: any(True for _ in m.parameters()))
    with torch_hooks(modules, before, after):
        run_torch(model, args)
    units = []
    for name, module in matched.items():
        if id(module) not in calls:
            raise OnnxtwinError(f"torch {name!r} ({type(module).__name__}): expected every "
                                "layer with parameters to be called on the sample inputs")
        units += _torch_units(calls[id(module)])
    return _inputs(args) + list(calls.values()), sorted(units, key=lambda u: u.call.start)


def _inside(name: str, parent: str) -> bool:
    """Module `name` lies strictly inside module `parent` ('' is the root)."""
    return name != parent and (parent == "" or name.startswith(parent + "."))


def _refuse_unsupported_torch(model, matched: dict[str, Any]) -> None:
    modules = dict(model.named_modules())
    for key in model.state_dict():
        name = layers.owner(key)
        if name not in matched and not any(_inside(name, p) for p in matched):
            kind = type(modules[name]).__name__ if name in modules else "a shared module"
            raise OnnxtwinError(f"torch {name!r} ({kind}): expected layers with parameters "
                                f"among {SUPPORTED}, got {kind}")


def _torch_units(call: Call) -> list[Unit]:
    """A matched module's units: one per layer of a multi-layer RNN."""
    kind, cls = _torch_kind(call.obj)
    count = call.obj.num_layers if kind in ("lstm", "gru") else 1
    if count == 1:
        return [Unit(call, kind, cls, call.name)]
    return [Unit(call, kind, f"{cls} layer {i + 1} of {count}", call.name, i)
            for i in range(count)]


def _keras_side(model, args: Sequence[np.ndarray]) -> tuple[list[Call], list[Unit]]:
    """All calls of the Keras run (inputs first) and its matched layers as units."""
    found = keras_layers(model, lambda layer: _keras_kind(layer) is None)
    _refuse_unsupported_keras(model, found)
    calls: dict[int, Call] = {}
    before, after = _recorder(calls, itertools.count(1), lambda layer: layer.name,
                              lambda layer: bool(layer.weights))
    with keras_calls(found, before, after):
        run_keras(model, args)
    units = []
    for layer in found:
        if _keras_kind(layer) is None:
            continue
        if id(layer) not in calls:
            raise OnnxtwinError(f"keras {layer.name!r} ({type(layer).__name__}): expected "
                                "every layer with weights to be called on the sample inputs")
        units.append(Unit(calls[id(layer)], *_keras_kind(layer), keras_key(layer)))
    return _inputs(args) + list(calls.values()), sorted(units, key=_definition_order(model))


def _definition_order(model) -> Callable[[Unit], tuple[int, int]]:
    """Sort key of Keras units: a functional model's layers in the order its graph was
    written (Keras runs independent branches, such as two heads, in another order), then
    call order inside each layer; a Sequential or subclassed model's call order."""
    if not _is_functional(model):
        return lambda unit: (0, unit.call.start)
    rank = {}
    for index, top in enumerate(_written_order(model)):  # ops too (a slice is a GetItem)
        inner = keras_layers(top) if hasattr(top, "_flatten_layers") else []
        for layer in [top, *inner]:
            rank.setdefault(id(layer), index)
    return lambda unit: (rank.get(id(unit.obj), len(rank)), unit.call.start)


def _is_functional(model) -> bool:
    try:
        from keras.src.models.functional import Functional  # no public name for it
    except ImportError:  # a Keras that moved it: call order, as for subclassed models
        return False
    return isinstance(model, Functional) and not isinstance(model, _sequential())


def _sequential():
    from onnxtwin.builders.keras_support import keras

    return keras.Sequential


def _written_order(model) -> list:
    """A functional model's layers in a topological order that follows the order the graph
    was written: each layer's consumers are discovered in the order they were called on
    its output (Keras' `_outbound_nodes`, private), and of the layers whose inputs are all
    ready, the first discovered comes first. `model.layers` orders by depth instead."""
    operations = list(model.operations)
    inside = {id(op): op for op in operations}
    discovered: dict[int, int] = {}
    stack = [op for op in reversed(operations) if not op._inbound_nodes
             or not any(p.operation is not None and id(p.operation) in inside
                        for n in op._inbound_nodes for p in n.parent_nodes)]
    while stack:  # depth first, consumers in call order
        op = stack.pop()
        if id(op) in discovered:
            continue
        discovered[id(op)] = len(discovered)
        stack.extend(reversed([n.operation for n in op._outbound_nodes
                               if id(n.operation) in inside]))
    for op in operations:  # anything not reached from an input: after, in Keras' order
        discovered.setdefault(id(op), len(discovered))
    parents = {id(op): {id(p.operation) for n in op._inbound_nodes for p in n.parent_nodes
                        if p.operation is not None and id(p.operation) in inside}
               for op in operations}
    ready = [(discovered[i], i) for i, up in parents.items() if not up]
    heapq.heapify(ready)
    order, done = [], set()
    while ready:
        _, i = heapq.heappop(ready)
        order.append(inside[i])
        done.add(i)
        for j, up in parents.items():
            if j not in done and i in up and up <= done and (discovered[j], j) not in ready:
                heapq.heappush(ready, (discovered[j], j))
    return order if len(order) == len(operations) else operations


def _refuse_unsupported_keras(model, found: list) -> None:
    """A layer (or the model itself) holding weights of its own, of no matched kind."""
    for layer in [model, *found]:
        if layer is not model and _keras_kind(layer) is not None:
            continue
        children = layer._flatten_layers(include_self=False, recursive=False)  # private, as above
        inside = {id(v) for child in children for v in child.weights}
        if any(id(v) not in inside for v in layer.weights):
            kind = type(layer).__name__
            raise OnnxtwinError(f"keras {layer.name!r} ({kind}): expected layers with weights "
                                f"among {SUPPORTED}, got {kind}")


def _same_count(torch_units: list[Unit], keras_units: list[Unit]) -> None:
    """As many units on each side; else name the first that has no counterpart."""
    if len(torch_units) == len(keras_units):
        return
    first = next((i for i, (t, k) in enumerate(zip(torch_units, keras_units, strict=False))
                  if t.kind != k.kind), min(len(torch_units), len(keras_units)))
    longer = torch_units if len(torch_units) > len(keras_units) else keras_units
    unmatched = f" (first unmatched: {longer[first].name!r} {longer[first].label})"
    raise OnnxtwinError(
        f"expected as many parameterised layers: torch has {len(torch_units)}"
        f"{unmatched if longer is torch_units else ''}, keras has {len(keras_units)}"
        f"{unmatched if longer is keras_units else ''}")


def _covered(maps: list[LayerMap], state: dict, keras_paths: list[str]) -> None:
    """Every torch state entry and Keras variable in exactly one map (tied or shared weights
    are not)."""
    for side, names, expected in (("torch", [n for m in maps for n in m.torch_names], state),
                                  ("keras", [p for m in maps for p in m.keras_paths],
                                   keras_paths)):
        if sorted(names) != sorted(expected):
            missing = sorted(set(expected) - set(names))
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise OnnxtwinError(f"expected the matched layers to hold every {side} weight "
                                f"once; missing {missing[:3]}, repeated {repeated[:3]}")
