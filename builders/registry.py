"""Names -> specs: the built-in variants, and the user's own from code or a TOML file.

TOML format, one table per variant (fields are the family spec's; omitted ones keep
their defaults):

    [models.tiny-gru]
    family = "rnn"
    cell = "gru"
    hidden = [16, 8]
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from onnxtwin.builders.cnn import CnnSpec
from onnxtwin.builders.rnn import RnnSpec
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.builders.transformer import TransformerSpec
from onnxtwin.runtime.errors import OnnxtwinError

FAMILIES: dict[str, type[ModelSpec]] = {s.family: s for s in (CnnSpec, RnnSpec, TransformerSpec)}

BUILTIN: tuple[ModelSpec, ...] = (
    CnnSpec(name="cnn"),
    RnnSpec(name="lstm", cell="lstm"),
    RnnSpec(name="gru", cell="gru"),
    RnnSpec(name="bilstm", cell="lstm", bidirectional=True),
    TransformerSpec(name="transformer", activation="relu"),
    TransformerSpec(name="transformer-gelu", activation="gelu"),
)

_variants: dict[str, ModelSpec] = {s.name: s for s in BUILTIN}


def names() -> list[str]:
    """Registered variant names, built-ins first."""
    return list(_variants)


def get_spec(name: str) -> ModelSpec:
    """The registered spec called `name`."""
    try:
        return _variants[name]
    except KeyError:
        raise OnnxtwinError(f"unknown model {name!r}: expected one of {names()}") from None


def make_spec(family: str, name: str, **params: object) -> ModelSpec:
    """Build a spec of `family` from plain values (lists become tuples)."""
    if family not in FAMILIES:
        raise OnnxtwinError(f"model {name!r}: unknown family {family!r}, "
                            f"expected one of {sorted(FAMILIES)}")
    cls = FAMILIES[family]
    known = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise OnnxtwinError(f"model {name!r}: unknown field(s) {unknown} for family {family!r}, "
                            f"expected some of {known}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(name=name, **values)


def register(spec: ModelSpec) -> ModelSpec:
    """Add a variant; a built-in name cannot be taken."""
    if any(s.name == spec.name for s in BUILTIN):
        raise OnnxtwinError(f"model {spec.name!r}: expected a name that is not built in "
                            f"({[s.name for s in BUILTIN]})")
    _variants[spec.name] = spec
    return spec


def load_toml(path: str | Path) -> list[ModelSpec]:
    """Register every `[models.NAME]` table of a TOML file; return the new specs."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise OnnxtwinError(f"spec file: expected a readable TOML file, got {path} "
                            f"({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OnnxtwinError(f"spec file {path}: expected valid TOML, got {e}") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise OnnxtwinError(f"spec file {path}: expected [models.NAME] tables, "
                            f"got top-level keys {sorted(data)}")
    specs = []
    for name, table in models.items():
        if not isinstance(table, dict) or "family" not in table:
            raise OnnxtwinError(f"spec file {path}: model {name!r} expected a table with "
                                f"'family', got {table!r}")
        params = dict(table)
        specs.append(make_spec(params.pop("family"), name, **params))
    return [register(s) for s in specs]
