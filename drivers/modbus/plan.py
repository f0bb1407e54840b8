"""Request planning: which Modbus read requests cover a set of tags.

This module owns the pure function `plan_requests` and the `ModbusTag` / `Request` shapes; it
does no I/O and no decoding. Tags are grouped by (unit, table), sorted by address and merged
greedily: a tag joins the current request when the gap before it is at most `max_gap` registers
and the request stays within `max_registers`; otherwise it opens a new request. Overlapping
tags (two views of the same registers) share a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.base import ConfigError
from drivers.modbus import codec

TABLES = ("holding", "input")
MAX_READ_REGISTERS = 125  # Modbus application protocol limit for FC 3 / FC 4


@dataclass(frozen=True)
class ModbusTag:
    """One value in one Modbus table. Engineering value = raw * scale + offset."""

    name: str
    address: int
    type: str = "uint16"
    order: str = "ABCD"
    table: str = "holding"
    scale: float = 1.0
    offset: float = 0.0
    unit: int = 1

    @property
    def count(self) -> int:
        """Registers this tag occupies."""
        return codec.register_count(self.type)

    @property
    def end(self) -> int:
        """One past the last register of this tag."""
        return self.address + self.count


@dataclass(frozen=True)
class Request:
    """One read request: `count` registers from `address` of `table` on `unit`."""

    unit: int
    table: str
    address: int
    count: int
    tags: tuple[ModbusTag, ...]


def validate_tags(tags: Sequence[ModbusTag], max_registers: int = MAX_READ_REGISTERS) -> None:
    """Raise ConfigError naming the first unusable tag (type, order, table, range, name)."""
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ConfigError(f"max_registers must be 1..{MAX_READ_REGISTERS}, got {max_registers}")
    seen: set[str] = set()
    for t in tags:
        if t.name in seen:
            raise ConfigError(f"tag {t.name!r}: duplicate name")
        seen.add(t.name)
        try:
            lay = codec.layout(t.type, t.order)
        except ValueError as exc:
            raise ConfigError(f"tag {t.name!r}: {exc}") from exc
        if t.table not in TABLES:
            raise ConfigError(f"tag {t.name!r}: table must be one of {TABLES}, got {t.table!r}")
        if t.address < 0 or t.address + lay.count > 65536:
            raise ConfigError(f"tag {t.name!r}: address {t.address} out of range 0..65535")
        if not 0 <= t.unit <= 255:
            raise ConfigError(f"tag {t.name!r}: unit {t.unit} out of range 0..255")
        if lay.count > max_registers:
            raise ConfigError(f"tag {t.name!r}: {t.type} needs more than {max_registers} registers")


def plan_requests(
    tags: Sequence[ModbusTag], max_gap: int = 10, max_registers: int = MAX_READ_REGISTERS
) -> list[Request]:
    """Coalesced read requests covering every tag, ordered by (unit, table, address).

    Never exceeds `max_registers` per request and never bridges more than `max_gap` unused
    registers. Raises ConfigError for tags that cannot be planned.
    """
    if max_gap < 0:
        raise ConfigError(f"max_gap must be >= 0, got {max_gap}")
    validate_tags(tags, max_registers)
    groups: dict[tuple[int, str], list[ModbusTag]] = {}
    for t in tags:
        groups.setdefault((t.unit, t.table), []).append(t)
    out: list[Request] = []
    for (unit, table), members in sorted(groups.items()):
        members.sort(key=lambda t: (t.address, t.end))
        start = members[0].address
        end = members[0].end
        current: list[ModbusTag] = [members[0]]
        for t in members[1:]:
            if t.address - end <= max_gap and max(end, t.end) - start <= max_registers:
                end = max(end, t.end)
                current.append(t)
                continue
            out.append(Request(unit, table, start, end - start, tuple(current)))
            start, end, current = t.address, t.end, [t]
        out.append(Request(unit, table, start, end - start, tuple(current)))
    return out
