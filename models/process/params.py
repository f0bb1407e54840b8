"""Loading and validating the Digital Original's parameter file (`loop.toml`).

This module owns the file format and the parameter vector layout shared with the compiled
code in `models.process.loop`; it does not own the physics. The file holds one table per
parameter, named with its unit, giving the nominal value and the plausible range:

    [params]
    head_shutoff_m = { nominal = 32.0, range = [25.0, 40.0], about = "..." }

and a `[model]` table with integration settings. Every problem (unknown or missing key, wrong
type, value out of its range, malformed range) raises `ModelError` naming the file and the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import F64, ModelError

DEFAULT_PATH = Path(__file__).with_name("loop.toml")

# Order matters: it is the layout of the parameter vector the compiled code indexes.
PARAM_NAMES: tuple[str, ...] = (
    "head_shutoff_m",
    "pump_head_coeff_m_per_lpm2",
    "pipe_coeff_m_per_lpm2",
    "valve_coeff_m_per_lpm2",
    "inertance_m_s_per_lpm",
    "pump_efficiency_frac",
    "mech_loss_w",
    "iron_loss_w",
    "winding_resistance_ohm",
    "supply_voltage_v",
    "power_factor",
    "tank_area_m2",
    "pipe_volume_m3",
    "level_nominal_m",
    "heat_loss_w_per_k",
    "ambient_temp_c",
    "motor_heat_capacity_j_per_k",
    "motor_thermal_resistance_k_per_w",
    "density_kg_per_m3",
    "specific_heat_j_per_kg_k",
)
P_INDEX: dict[str, int] = {n: i for i, n in enumerate(PARAM_NAMES)}

# Parameters whose range may include zero, or any sign; every other one divides somewhere.
NONNEGATIVE_PARAMS = frozenset({"mech_loss_w", "iron_loss_w"})
SIGNED_PARAMS = frozenset({"ambient_temp_c"})

MODEL_KEYS: dict[str, tuple[float, float]] = {
    # key: (lo, hi) hard limits on the integration settings
    "substep_s": (1e-4, 0.1),
    # Observer time constants (s) per state, 0 = off: see `LoopModel.observe`.
    "observer_flow_s": (0.0, 1e6),
    "observer_level_s": (0.0, 1e6),
    "observer_fluid_temp_s": (0.0, 1e6),
    "observer_motor_temp_s": (0.0, 1e6),
}
OBSERVER_KEYS = (
    "observer_flow_s",
    "observer_level_s",
    "observer_fluid_temp_s",
    "observer_motor_temp_s",
)


@dataclass(frozen=True, slots=True)
class LoopParams:
    """Validated parameters: the nominal vector (PARAM_NAMES order), ranges and settings."""

    values: F64
    lo: F64
    hi: F64
    substep_s: float
    source: str
    observer_s: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)

    def __getitem__(self, name: str) -> float:
        return float(self.values[P_INDEX[name]])

    def replace(self, **changes: float) -> LoopParams:
        """A copy with some nominal values changed (for variants); ranges are not re-checked."""
        values = self.values.copy()
        for name, value in changes.items():
            if name not in P_INDEX:
                raise ModelError(f"{self.source}: params.{name}: unknown parameter")
            values[P_INDEX[name]] = float(value)
        return LoopParams(values, self.lo, self.hi, self.substep_s, self.source, self.observer_s)


def _number(source: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"{source}: {key}: expected a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise ModelError(f"{source}: {key}: must be finite")
    return f


def _param(source: str, name: str, entry: object) -> tuple[float, float, float]:
    key = f"params.{name}"
    if not isinstance(entry, dict):
        raise ModelError(f"{source}: {key}: expected a table {{ nominal = ..., range = [lo, hi] }}")
    extra = set(entry) - {"nominal", "range", "about"}
    if extra:
        raise ModelError(f"{source}: {key}.{sorted(extra)[0]}: unknown field")
    if "nominal" not in entry:
        raise ModelError(f"{source}: {key}.nominal: missing")
    if "range" not in entry:
        raise ModelError(f"{source}: {key}.range: missing")
    nominal = _number(source, f"{key}.nominal", entry["nominal"])
    rng = entry["range"]
    if not isinstance(rng, list) or len(rng) != 2:
        raise ModelError(f"{source}: {key}.range: expected [lo, hi]")
    lo = _number(source, f"{key}.range", rng[0])
    hi = _number(source, f"{key}.range", rng[1])
    if not lo < hi:
        raise ModelError(f"{source}: {key}.range: lo must be below hi")
    if not lo <= nominal <= hi:
        raise ModelError(f"{source}: {key}.nominal: {nominal:g} outside its range [{lo:g}, {hi:g}]")
    about = entry.get("about", "")
    if not isinstance(about, str):
        raise ModelError(f"{source}: {key}.about: expected a string")
    return nominal, lo, hi


def parse_params(data: dict[str, Any], source: str) -> LoopParams:
    """Validate an already-parsed TOML document; `source` names it in error messages."""
    extra = set(data) - {"model", "params"}
    if extra:
        raise ModelError(f"{source}: {sorted(extra)[0]}: unknown table")
    model = data.get("model", {})
    params = data.get("params")
    if not isinstance(model, dict):
        raise ModelError(f"{source}: model: expected a table")
    if not isinstance(params, dict):
        raise ModelError(f"{source}: params: missing table")
    for key in model:
        if key not in MODEL_KEYS:
            raise ModelError(f"{source}: model.{key}: unknown key")
    substep = _number(source, "model.substep_s", model.get("substep_s", 0.05))
    lo_s, hi_s = MODEL_KEYS["substep_s"]
    if not lo_s <= substep <= hi_s:
        raise ModelError(f"{source}: model.substep_s: {substep:g} outside [{lo_s:g}, {hi_s:g}]")
    observer = []
    for key in OBSERVER_KEYS:
        tau = _number(source, f"model.{key}", model.get(key, 0.0))
        lo_o, hi_o = MODEL_KEYS[key]
        if not lo_o <= tau <= hi_o:
            raise ModelError(f"{source}: model.{key}: {tau:g} outside [{lo_o:g}, {hi_o:g}]")
        observer.append(tau)
    for name in params:
        if name not in P_INDEX:
            raise ModelError(f"{source}: params.{name}: unknown parameter")
    for name in PARAM_NAMES:
        if name not in params:
            raise ModelError(f"{source}: params.{name}: missing")
    rows = [_param(source, n, params[n]) for n in PARAM_NAMES]
    arr = np.array(rows, dtype=np.float64)
    for i, name in enumerate(PARAM_NAMES):
        lo = arr[i, 1]
        if name in SIGNED_PARAMS:
            continue
        if lo < 0.0 or (lo == 0.0 and name not in NONNEGATIVE_PARAMS):
            raise ModelError(f"{source}: params.{name}.range: must be positive")
    frac_hi = arr[[P_INDEX["pump_efficiency_frac"], P_INDEX["power_factor"]], 2]
    if np.any(frac_hi > 1.0):
        raise ModelError(f"{source}: params: efficiency and power factor ranges must be <= 1")
    return LoopParams(
        np.ascontiguousarray(arr[:, 0]),
        arr[:, 1].copy(),
        arr[:, 2].copy(),
        substep,
        source,
        tuple(observer),
    )


def load_params(path: str | Path | None = None) -> LoopParams:
    """Read and validate a parameter file (default: the shipped `loop.toml`)."""
    p = DEFAULT_PATH if path is None else Path(path)
    source = str(p)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ModelError(f"{source}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{source}: not valid TOML: {exc}") from exc
    return parse_params(data, source)
