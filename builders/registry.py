"""Names -> specs: families register themselves where they are defined, and so do variants.

A family file decorates its spec class with `@family` and registers its built-in
variants with `builtin(...)`, as torchvision's `@register_model` does; this module
knows no family by name (onnxtwin.builders.families imports them). Users add variants
from code (`register`) or a TOML file, one table per variant (fields are the family
spec's; omitted ones keep their defaults):

    [models.tiny-gru]
    family = "rnn"
    cell = "gru"
    hidden = [16, 8]

The same file holds a user's own models (onnxtwin.builders.factory_entry: `torch` and/or
`keras` factories) and ONNX files (onnxtwin.builders.onnx_entry: `onnx = "file.onnx"`).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from pathlib import Path

from onnxtwin.builders.signature import ModelSpec
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import safe_name, shown

_families: dict[str, type[ModelSpec]] = {}
_builtin: dict[str, ModelSpec] = {}
_variants: dict[str, ModelSpec] = {}


def family(cls: type[ModelSpec]) -> type[ModelSpec]:
    """Class decorator: register a spec class under its `family` name (once)."""
    _load_families()  # a user's family must not take a built-in family's name first
    if cls.family in _families:
        raise ValueError(f"family {cls.family!r} is registered twice "
                         f"({_families[cls.family].__qualname__}, {cls.__qualname__})")
    _families[cls.family] = cls
    return cls


def builtin(*specs: ModelSpec) -> None:
    """Register a family's built-in variants; a name is taken once."""
    _load_families()
    for spec in specs:
        if spec.name in _builtin:
            raise ValueError(f"built-in model {spec.name!r} is registered twice")
        _builtin[spec.name] = _variants[spec.name] = spec


@functools.cache
def _load_families() -> None:
    """Import the built-in families (each registers on import). Re-entered harmlessly while
    they import: the package is then already in sys.modules."""
    import onnxtwin.builders.families  # noqa: F401


def families() -> dict[str, type[ModelSpec]]:
    """Family name -> spec class."""
    _load_families()
    return dict(_families)


def builtins() -> tuple[ModelSpec, ...]:
    """The built-in variants, in registration order."""
    _load_families()
    return tuple(_builtin.values())


def names() -> list[str]:
    """Registered variant names, built-ins first."""
    _load_families()
    return list(_variants)


def get_spec(name: str) -> ModelSpec:
    """The registered spec called `name`."""
    _load_families()
    try:
        return _variants[name]
    except KeyError:
        raise OnnxtwinError(f"unknown model {name!r}: expected one of {names()}") from None


def make_spec(family_name: str, name: str, /, **params: object) -> ModelSpec:
    """Build a spec of a family from plain values (lists become tuples)."""
    safe_name(name, "model name")
    known_families = families()
    if not isinstance(family_name, str) or family_name not in known_families:
        raise OnnxtwinError(f"model {name!r}: unknown family {shown(family_name)}, "
                            f"expected one of {sorted(known_families)}")
    cls = known_families[family_name]
    known = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise OnnxtwinError(f"model {name!r}: unknown field(s) {shown(unknown)} for family "
                            f"{family_name!r}, expected some of {known}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(name=name, **values)


def register(spec: ModelSpec) -> ModelSpec:
    """Add a user variant; a built-in name cannot be taken (the spec's name is safe: specs
    check it when made)."""
    _load_families()
    if spec.name in _builtin:
        raise OnnxtwinError(f"model {spec.name!r}: expected a name that is not built in "
                            f"({list(_builtin)})")
    _variants[spec.name] = spec
    return spec


def load_toml(path: str | Path) -> list[ModelSpec]:
    """Register every `[models.NAME]` table of a TOML file; return the new specs."""
    path = Path(path)
    return [register(s) for s in toml_specs(read_toml(path), path)]


def read_toml(path: str | Path) -> dict:
    """A spec file's TOML document, or one line saying why it cannot be read."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise OnnxtwinError(f"spec file: expected a readable TOML file, got {path} "
                            f"({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OnnxtwinError(f"spec file {path}: expected valid TOML, got {e}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise OnnxtwinError(f"spec file {path}: expected valid TOML, got arrays or tables "
                            "nested too deep to parse") from None


def toml_specs(document: dict, path: str | Path) -> list[ModelSpec]:
    """The specs of a spec file's `[models.NAME]` tables (at least one), not registered."""
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise OnnxtwinError(f"spec file {path}: expected [models.NAME] tables, "
                            f"got top-level keys {shown(sorted(document))}")
    specs = []
    for name, table in models.items():
        safe_name(name, f"spec file {path}: model name")
        kinds = [k for k in ENTRY_KINDS if isinstance(table, dict) and k in table]
        if not isinstance(table, dict) or not kinds or ("family" in kinds and len(kinds) > 1) \
                or ("onnx" in kinds and len(kinds) > 1):
            raise OnnxtwinError(f"spec file {path}: model {name!r} expected a table with one "
                                f"of 'family', 'onnx', or 'torch' and/or 'keras', got "
                                f"{shown(sorted(table) if isinstance(table, dict) else table)}")
        specs.append(_entry_spec(name, dict(table), kinds[0], Path(path).parent))
    return specs


ENTRY_KINDS = ("family", "onnx", "torch", "keras")
"""The key that says what a `[models.NAME]` table is: a family variant, an ONNX file, or a
user's own model (torch and/or keras factories)."""


def _entry_spec(name: str, table: dict, kind: str, base: Path) -> ModelSpec:
    if kind == "family":
        return make_spec(table.pop("family"), name, **table)
    if kind == "onnx":
        from onnxtwin.builders.onnx_entry import onnx_spec

        return onnx_spec(name, table, base)
    from onnxtwin.builders.factory_entry import factory_spec

    return factory_spec(name, table, base)
