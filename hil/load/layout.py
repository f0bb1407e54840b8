"""The load rig's tag set: names, ranges, deadbands, register map and the change-time stamp.

Every plant instance `i` serves up to 18 tags named `p<i:04d>_<name>`: first `stamp`, then the
17 measurements of `hil.tags.TAGS` in table order. A rig of `n` tags has `ceil(n / 18)`
instances; the last one serves only the first `n mod 18` of its tags. Instances are split
into contiguous slices, one per server process (`part_slices`).

Change time. Each tick the rig writes every value of an instance at once, together with its
`stamp`: the write time in whole milliseconds of Unix time, modulo 2**32 (a uint32 that wraps
every 49.7 days). Modbus has no timestamps, so a subscriber recovers the change time of the
whole instance from the stamp's value alone (`stamp_delay_s`); OPC UA also carries it as each
value's SourceTimestamp.

Values change every tick. A plant holds setpoints, valve positions and counters still for
long stretches, so each served value is the plant's measurement plus a tick marker
`dither * (tick % 2)`, with `dither` an eighth of the tag's realistic deadband: far below
sensor noise and below every deadband of `REALISTIC_DEADBAND` (so report by exception hides
it), yet a change that deadband 0 publishes. Modbus registers: instance `j` of a process
starts at input register `36 * j`; the stamp is a uint32 (ABCD), every other tag a float32
(ABCD), 2 registers each, so no quantisation hides a change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hil.tags import TAGS

NAMESPACE_URI = "urn:edge-agent:hil:load"
TAGS_PER_INSTANCE = 18
REGS_PER_TAG = 2
REGS_PER_INSTANCE = TAGS_PER_INSTANCE * REGS_PER_TAG
MAX_INSTANCES_PER_PART = 65536 // REGS_PER_INSTANCE
STAMP_MODULUS = 2**32
MODBUS_UNIT = 1
MIN_TAGS = TAGS_PER_INSTANCE  # instance 0 must be complete: the model reads its tags

PLANT_NAMES: tuple[str, ...] = tuple(t.name for t in TAGS)
NAMES: tuple[str, ...] = ("stamp", *PLANT_NAMES)

# Deadbands a plant engineer would set (the demo configuration's, status_word 0.5 so a bit
# flip is reported): report by exception. Deadband 0 publishes every sample.
REALISTIC_DEADBAND: dict[str, float] = {
    "stamp": 0.0,
    "flow_sp": 0.1,
    "temp_sp": 0.1,
    "pump_speed": 0.5,
    "heater_power": 0.05,
    "valve_in": 0.5,
    "valve_out": 0.5,
    "flow": 0.3,
    "pressure": 0.02,
    "level": 0.005,
    "fluid_temp": 0.1,
    "motor_speed": 10.0,
    "motor_current": 0.02,
    "motor_temp": 0.2,
    "motor_power": 0.01,
    "vibration": 0.005,
    "energy": 10.0,
    "status_word": 0.5,
}
DITHER: dict[str, float] = {name: db / 8.0 for name, db in REALISTIC_DEADBAND.items()}


@dataclass(frozen=True, slots=True)
class LoadTag:
    """One served tag: global instance, position in the instance, name, unit and range."""

    instance: int
    slot: int
    name: str
    unit: str
    lo: float
    hi: float

    @property
    def short(self) -> str:
        """The name inside the instance (`flow`, `stamp`)."""
        return NAMES[self.slot]


def tag_name(instance: int, short: str) -> str:
    """`p0003_flow`."""
    return f"p{instance:04d}_{short}"


def instance_count(n_tags: int) -> int:
    """Plant instances needed for `n_tags` tags."""
    if n_tags < MIN_TAGS:
        raise ValueError(f"the load rig needs at least {MIN_TAGS} tags, got {n_tags}")
    return math.ceil(n_tags / TAGS_PER_INSTANCE)


def tags_in_instance(n_tags: int, instance: int) -> int:
    """How many of its 18 tags instance `instance` serves."""
    return max(0, min(TAGS_PER_INSTANCE, n_tags - instance * TAGS_PER_INSTANCE))


def part_slices(n_tags: int, parts: int) -> list[range]:
    """The instances of each server process: contiguous, as even as possible."""
    n = instance_count(n_tags)
    if parts < 1 or parts > n:
        raise ValueError(f"processes must be between 1 and {n} for {n_tags} tags")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        if size > MAX_INSTANCES_PER_PART:
            raise ValueError(
                f"{size} instances in one process exceed the Modbus address space "
                f"({MAX_INSTANCES_PER_PART}); use more processes"
            )
        out.append(range(start, start + size))
        start += size
    return out


_UNITS = {t.name: (t.unit, float(t.lo), float(t.hi)) for t in TAGS}


def tags_of_instance(n_tags: int, instance: int) -> list[LoadTag]:
    """The tags instance `instance` serves, in slot order."""
    out = []
    for slot in range(tags_in_instance(n_tags, instance)):
        short = NAMES[slot]
        if short == "stamp":
            unit, lo, hi = "ms", 0.0, float(STAMP_MODULUS - 1)
        else:
            unit, lo, hi = _UNITS[short]
            hi += 2 * DITHER[short]
        out.append(LoadTag(instance, slot, tag_name(instance, short), unit, lo, hi))
    return out


def modbus_address(local_instance: int, slot: int) -> int:
    """First input register of a tag, `local_instance` counted inside its process."""
    return local_instance * REGS_PER_INSTANCE + slot * REGS_PER_TAG


def stamp_ms(unix_s: float) -> int:
    """The stamp of a change at `unix_s`: whole milliseconds modulo 2**32."""
    return int(unix_s * 1000.0) % STAMP_MODULUS


def stamp_delay_s(stamp: float, recv_unix_s: float) -> float:
    """Seconds from the change a stamp marks to `recv_unix_s` (wrap-around handled)."""
    now_ms = int(recv_unix_s * 1000.0) % STAMP_MODULUS
    return ((now_ms - int(stamp)) % STAMP_MODULUS) / 1000.0
