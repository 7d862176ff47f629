"""Tolerances as data: a default per dtype, overridden per model and per output."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE

DEFAULTS = {"float32": FLOAT32_ABS_TOLERANCE, "float64": 1e-12}


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
        return {"defaults": {**DEFAULTS, **self.defaults}, "models": self.models}


def load_tolerances(path: str | Path | None) -> Tolerances:
    """The `[tolerances]` table of a spec TOML file (absent: the defaults).

        [tolerances]
        my-model = 2e-5                 # every output of my-model
        [tolerances.other]
        logits = 1e-4                   # one output
    """
    if path is None:
        return Tolerances()
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("tolerances", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OnnxtwinError(f"spec file {path}: expected readable TOML, got {e}") from None
    if not isinstance(table, dict):
        raise OnnxtwinError(f"spec file {path}: expected [tolerances] to be a table, got "
                            f"{table!r}")
    models: dict[str, float | dict[str, float]] = {}
    for model, value in table.items():
        if isinstance(value, dict):
            models[model] = {o: _positive(v, f"{path}: tolerances.{model}.{o}")
                             for o, v in value.items()}
        else:
            models[model] = _positive(value, f"{path}: tolerances.{model}")
    return Tolerances(models=models)


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise OnnxtwinError(f"{what}: expected a positive number, got {value!r}")
    return float(value)
