"""The faults the rig can inject while it runs: their names, parameters, effects and parsing.

This module owns the fault catalogue (`FAULT_KINDS`, `FAULT_PARAMS`, `EXPECTED_TAGS`), the
`kind[:key=value,...]@t` syntax, the physics-side fault state (`ActiveFaults`, which
`hil.plant.Plant` reads every step) and a time-ordered schedule. It does not own the physics
(`hil.plant`) nor the PLC servers: `plc-restart` is carried out by `hil.rig`.

`EXPECTED_TAGS[kind]` lists the tags an agent comparing the plant with its Digital Original
should alarm on: the model outputs whose residual the fault moves, plus, for `plc-restart`,
every tag of the stopped PLC (they go BAD).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from hil.tags import BY_NAME, tags_of

ParamValue = float | str

FAULT_KINDS: dict[str, str] = {
    "drift": "fluid_temp sensor drifts (rate_k_s, default +0.05 K/s)",
    "stuck": "flow sensor frozen at its current value",
    "leak": "tank leak, level falls (rate_m_s at nominal level, default 0.0015 m/s)",
    "pump-wear": "pump head and efficiency loss (head, eff fractions, default 0.25 each)",
    "plc-restart": "a PLC server stops, back after down_s (plc=process|drive, default 5 s)",
    "pump-ageing": "pump efficiency falls slowly (rate_per_s 0.0005/s default, max_loss 0.5)",
    "bad-value": "a transmitter fails: tag serves value (tag=fluid_temp, value=nan default)",
}

FAULT_PARAMS: dict[str, dict[str, ParamValue]] = {
    "drift": {"rate_k_s": 0.05},
    "stuck": {},
    "leak": {"rate_m_s": 0.0015},
    "pump-wear": {"head": 0.25, "eff": 0.25},
    "plc-restart": {"plc": "process", "down_s": 5.0},
    "bad-value": {"tag": "fluid_temp", "value": float("nan")},
    "pump-ageing": {"rate_per_s": 0.0005, "max_loss": 0.5},
}

EXPECTED_TAGS: dict[str, tuple[str, ...]] = {
    "drift": ("fluid_temp",),
    "stuck": ("flow",),
    "leak": ("level",),
    "pump-wear": ("flow", "pressure", "motor_current"),
    "plc-restart": tuple(t.name for t in tags_of("process")),
    "bad-value": ("fluid_temp",),
    "pump-ageing": ("motor_current",),
}

PHYSICS_KINDS = frozenset({"drift", "stuck", "leak", "pump-wear", "bad-value", "pump-ageing"})


def expected_tags(kind: str, params: Mapping[str, ParamValue] | None = None) -> tuple[str, ...]:
    """The tags a fault of `kind` with `params` should raise alarms on."""
    if kind == "plc-restart":
        plc = check_params(kind, params or {})["plc"]
        return tuple(t.name for t in tags_of("drive" if plc == "drive" else "process"))
    if kind == "bad-value":
        return (str(check_params(kind, params or {})["tag"]),)
    return EXPECTED_TAGS[kind]


def check_params(kind: str, params: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """Defaults filled in and every value checked; raises ValueError naming the problem."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    defaults = FAULT_PARAMS[kind]
    out = dict(defaults)
    for key, value in params.items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ValueError(f"fault {kind}: unknown parameter {key!r} (known: {known})")
        if isinstance(defaults[key], str):
            out[key] = str(value)
        else:
            try:
                out[key] = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"fault {kind}: {key} must be a number, got {value!r}") from exc
    if kind == "plc-restart":
        if out["plc"] not in ("process", "drive"):
            raise ValueError(f"fault plc-restart: plc must be process or drive, got {out['plc']!r}")
        if float(out["down_s"]) < 0.0:
            raise ValueError("fault plc-restart: down_s must be >= 0")
    if kind == "pump-wear" and not all(0.0 <= float(out[k]) < 1.0 for k in ("head", "eff")):
        raise ValueError("fault pump-wear: head and eff must be fractions in [0, 1)")
    if kind == "bad-value":
        tag = BY_NAME.get(str(out["tag"]))
        if tag is None:
            raise ValueError(f"fault bad-value: unknown tag {out['tag']!r}")
        if tag.plc == "drive" and tag.reg_type != "float32":
            raise ValueError(f"fault bad-value: {tag.name} is an integer register; use a float tag")
    if kind == "pump-ageing" and not (
        float(out["rate_per_s"]) >= 0.0 and 0.0 <= float(out["max_loss"]) < 1.0
    ):
        raise ValueError("fault pump-ageing: rate_per_s >= 0 and max_loss in [0, 1) required")
    if kind == "leak" and float(out["rate_m_s"]) < 0.0:
        raise ValueError("fault leak: rate_m_s must be >= 0")
    return out


def _value(text: str) -> ParamValue:
    try:
        return float(text)
    except ValueError:
        return text


def parse_fault(text: str) -> tuple[str, float, dict[str, ParamValue]]:
    """Parse `kind@t` or `kind:key=value,key=value@t` (t in sim seconds, default 0)."""
    spec, at_s = text.strip(), 0.0
    if "@" in spec:
        spec, _, at_text = spec.rpartition("@")
        try:
            at_s = float(at_text)
        except ValueError as exc:
            raise ValueError(f"fault {text!r}: time after '@' must be seconds") from exc
        if at_s < 0.0:
            raise ValueError(f"fault {text!r}: time must be >= 0")
    kind, _, rest = spec.partition(":")
    params: dict[str, ParamValue] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"fault {text!r}: parameter {item!r} is not key=value")
        params[key.strip()] = _value(value.strip())
    return kind, at_s, check_params(kind, params)


@dataclass(slots=True)
class ActiveFaults:
    """The physics-side fault state the plant reads every step (all zero: healthy)."""

    drift_k_s: float = 0.0
    drift_offset_k: float = 0.0
    stuck: bool = False
    leak_m_s: float = 0.0
    head_loss: float = 0.0
    eff_loss: float = 0.0
    bad_tag: str = ""
    bad_value: float = float("nan")
    eff_loss_rate: float = 0.0
    eff_loss_max: float = 0.0

    def apply(self, kind: str, params: Mapping[str, ParamValue] | None = None) -> None:
        """Start a physics fault now. `plc-restart` is not physics: ValueError."""
        p = check_params(kind, params or {})
        if kind not in PHYSICS_KINDS:
            raise ValueError(f"fault {kind} is not a plant fault; the rig carries it out")
        if kind == "drift":
            self.drift_k_s = float(p["rate_k_s"])
        elif kind == "stuck":
            self.stuck = True
        elif kind == "leak":
            self.leak_m_s = float(p["rate_m_s"])
        elif kind == "pump-ageing":
            self.eff_loss_rate = float(p["rate_per_s"])
            self.eff_loss_max = float(p["max_loss"])
        elif kind == "bad-value":
            self.bad_tag, self.bad_value = str(p["tag"]), float(p["value"])
        else:
            self.head_loss = float(p["head"])
            self.eff_loss = float(p["eff"])

    def clear(self) -> None:
        """Back to healthy (a drifted sensor is recalibrated, a leak fixed, the pump replaced)."""
        self.drift_k_s = self.drift_offset_k = self.leak_m_s = 0.0
        self.head_loss = self.eff_loss = 0.0
        self.eff_loss_rate = self.eff_loss_max = 0.0
        self.stuck = False
        self.bad_tag = ""

    @property
    def any(self) -> bool:
        return bool(
            self.drift_k_s
            or self.stuck
            or self.leak_m_s
            or self.head_loss
            or self.eff_loss
            or self.bad_tag
            or self.eff_loss_rate
        )

    def age(self, dt: float) -> None:
        """Advance slow faults by `dt` seconds (pump ageing)."""
        if self.eff_loss_rate:
            self.eff_loss = min(self.eff_loss_max, self.eff_loss + self.eff_loss_rate * dt)


@dataclass(slots=True)
class FaultSchedule:
    """Faults waiting for their sim time; `due(t)` pops the ones whose time has come."""

    _heap: list[tuple[float, int, str, dict[str, ParamValue]]] = field(default_factory=list)
    _n: int = 0

    def add(self, kind: str, at_s: float, params: Mapping[str, ParamValue] | None = None) -> None:
        heapq.heappush(self._heap, (at_s, self._n, kind, check_params(kind, params or {})))
        self._n += 1

    def due(self, t: float) -> list[tuple[str, dict[str, ParamValue]]]:
        out: list[tuple[str, dict[str, ParamValue]]] = []
        while self._heap and self._heap[0][0] <= t:
            _, _, kind, params = heapq.heappop(self._heap)
            out.append((kind, params))
        return out

    def __len__(self) -> int:
        return len(self._heap)
