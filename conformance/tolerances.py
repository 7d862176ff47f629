"""Tolerances as data: a default per dtype, overridden per model and per output."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from onnxtwin.builders.registry import get_spec, names, read_toml, toml_specs
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import shown
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE

DEFAULTS = {"float32": FLOAT32_ABS_TOLERANCE, "float64": 1e-12,
            **dict.fromkeys(("int8", "int16", "int32", "int64", "uint8", "bool"), 0.0)}
"""Integer and boolean outputs (an argmax, a mask) must be equal."""
REDUCED = {"fp16": 1e-2, "int8": 0.5}
"""Reduced-precision files against the oracle, as a fraction of each output's scale
(max(1, max |oracle|)). They catch a broken file (an error as large as the output); how
much accuracy a file keeps is the precision gate's business, on real data."""


@dataclass(frozen=True)
class Tolerances:
    """Max abs error allowed for one output: per (model, output), else per model, else the
    user's default for its dtype, else the family's float32 TOLERANCE, else DEFAULTS.

    `models` maps a model name to one number (every output) or to {output: number};
    `defaults` holds the user's per-dtype defaults (`--tolerance`).
    """

    defaults: dict[str, float] = field(default_factory=dict)
    models: dict[str, float | dict[str, float]] = field(default_factory=dict)

    def get(self, model: str, output: str, dtype: str,
            family_tolerance: float | None = None) -> float:
        override = self.models.get(model)
        if isinstance(override, dict) and output in override:
            return override[output]
        if isinstance(override, int | float):
            return float(override)
        if dtype in self.defaults:
            return self.defaults[dtype]
        if dtype == "float32" and family_tolerance is not None:
            return family_tolerance
        if dtype not in DEFAULTS:
            raise OnnxtwinError(f"tolerance for {model}/{output}: expected a default for dtype "
                                f"{dtype!r} ({sorted(DEFAULTS)}), got none")
        return DEFAULTS[dtype]

    def for_model(self, spec) -> dict[str, float]:
        """{output: tolerance} for every output of a spec (the engine's per-output table)."""
        return {o.name: self.get(spec.name, o.name, o.dtype, spec.TOLERANCE)
                for o in spec.signature.outputs}

    def with_default(self, dtype: str, value: float) -> Tolerances:
        return Tolerances({**self.defaults, dtype: _positive(value, f"default {dtype}")},
                          self.models)

    def to_dict(self) -> dict:
        return {"defaults": {**DEFAULTS, **self.defaults}, "models": self.models,
                "reduced": REDUCED}


def load_tolerances(path: str | Path | None) -> Tolerances:
    """The `[tolerances]` table of a spec TOML file (absent: the defaults).

        [tolerances]
        my-model = 2e-5                 # every output of my-model
        [tolerances.other]
        logits = 1e-4                   # one output

    Each model must be registered or defined in the file, each output one of its model's:
    a misspelt entry would otherwise leave its model at the default without a word.
    """
    if path is None:
        return Tolerances()
    document = read_toml(path)
    table = document.get("tolerances", {})
    if not isinstance(table, dict):
        raise OnnxtwinError(f"spec file {path}: expected [tolerances] to be a table, got "
                            f"{shown(table)}")
    known = {name: get_spec(name) for name in names()}
    if "models" in document:
        known |= {s.name: s for s in toml_specs(document, path)}
    models: dict[str, float | dict[str, float]] = {}
    for model, value in table.items():
        if model not in known:
            raise OnnxtwinError(f"spec file {path}: [tolerances] expected models among "
                                f"{list(known)}, got {shown(model)}")
        if isinstance(value, dict):
            outputs = known[model].signature.output_names
            if unknown := [o for o in value if o not in outputs]:
                raise OnnxtwinError(f"spec file {path}: [tolerances.{model}] expected "
                                    f"outputs among {list(outputs)}, got {shown(unknown[0])}")
            models[model] = {o: _positive(v, f"{path}: tolerances.{model}.{o}")
                             for o, v in value.items()}
        else:
            models[model] = _positive(value, f"{path}: tolerances.{model}")
    return Tolerances(models=models)


def _positive(value: object, what: str) -> float:
    """A number > 0 and finite: an infinite tolerance would pass every comparison."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 < value <= sys.float_info.max:
        raise OnnxtwinError(f"{what}: expected a positive number, got {shown(value)}")
    return float(value)
