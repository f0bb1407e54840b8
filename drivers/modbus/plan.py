"""Request planning: which Modbus read requests cover a set of tags.

This module owns the pure function `plan_requests` and the `ModbusTag` / `Request` shapes; it
does no I/O and no decoding.

Tags are grouped by (unit, table), sorted by address and merged greedily: a tag joins the
current request when the gap before it (unused registers, or bits for coils and discrete
inputs) is at most the gap limit and the request stays within the size limit; otherwise it
opens a new request. Because every sub-run of a valid request is itself valid, this greedy
cut gives the fewest requests under the gap rule (a property test compares it with a brute
force). A gap larger than the limit is a bound no request crosses. Overlapping tags (two
views of the same registers, several bits of one register) share a request.

Poll groups are planned separately: the driver calls `plan_requests` once per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.base import ConfigError
from drivers.modbus import codec
from drivers.modbus.wire import BIT_TABLES, MAX_READ_BITS, MAX_READ_REGISTERS, READ_FC

TABLES = tuple(READ_FC)
WRITABLE_TABLES = ("holding", "coil")
DEFAULT_GROUP = ""


@dataclass(frozen=True)
class ModbusTag:
    """One value in one Modbus table. Engineering value = raw * scale + offset.

    `table` is "holding", "input" (registers), "coil" or "discrete" (bits). `bit` (0..15)
    makes a `bool` one bit of a register; `length` is a string's size in registers; `group`
    names the poll group ("" = the driver's base interval).
    """

    name: str
    address: int
    type: str = "uint16"
    order: str = "ABCD"
    table: str = "holding"
    scale: float = 1.0
    offset: float = 0.0
    unit: int = 1
    bit: int | None = None
    length: int = 0
    group: str = DEFAULT_GROUP
    writable: bool = False

    @property
    def bits(self) -> bool:
        """True for coils and discrete inputs (addressed in bits)."""
        return self.table in BIT_TABLES

    @property
    def count(self) -> int:
        """Registers (or bits) this tag occupies."""
        if self.bits:
            return 1
        return codec.register_count(self.type, self.length)

    @property
    def end(self) -> int:
        """One past the last register (or bit) of this tag."""
        return self.address + self.count

    def field(self, start: int) -> codec.Field:
        """How to find this tag in a response that starts at `start`."""
        return codec.Field(
            self.address - start,
            self.type,
            self.order,
            self.scale,
            self.offset,
            self.bit,
            self.length,
        )


@dataclass(frozen=True)
class Request:
    """One read request: `count` registers or bits from `address` of `table` on `unit`."""

    unit: int
    table: str
    address: int
    count: int
    tags: tuple[ModbusTag, ...]

    @property
    def fc(self) -> int:
        """The Modbus function code that reads this request."""
        return READ_FC[self.table]


def tag_problem(t: ModbusTag) -> str | None:
    """Why `t` cannot be read, or None."""
    if t.table not in TABLES:
        return f"table must be one of {', '.join(TABLES)}, got {t.table!r}"
    if t.type not in codec.TYPES:
        return f"type must be one of {', '.join(codec.TYPES)}, got {t.type!r}"
    if t.order not in codec.ORDERS:
        return f"order must be one of {', '.join(codec.ORDERS)}, got {t.order!r}"
    if t.bits and t.type != "bool":
        return f"a {t.table} is a single bit: use type = 'bool', not {t.type!r}"
    if t.bits and t.bit is not None:
        return f"bit only applies to a bool inside a register, not to a {t.table}"
    if not t.bits and t.type == "bool" and (t.bit is None or not 0 <= t.bit <= 15):
        return "a bool in a register needs bit = 0..15"
    if t.type != "bool" and t.bit is not None:
        return f"bit only applies to type 'bool', not {t.type!r}"
    if t.type == "string" and t.length < 1:
        return "a string needs length = number of registers (1 or more)"
    if t.type != "string" and t.length:
        return f"length only applies to type 'string', not {t.type!r}"
    if t.type == "string" and t.order not in ("ABCD", "BADC"):
        return "a string's order is ABCD or BADC (only the byte swap applies)"
    if not 0 <= t.unit <= 255:
        return f"unit {t.unit} out of range 0..255"
    if t.address < 0 or t.end > 65536:
        return f"address {t.address} (+{t.count}) out of range 0..65535"
    if t.writable and t.table not in WRITABLE_TABLES:
        return f"a {t.table} cannot be written; writable tags live in holding or coil"
    return None


def validate_tags(
    tags: Sequence[ModbusTag],
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> None:
    """Raise ConfigError naming the first unusable tag or limit."""
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ConfigError(f"max_registers must be 1..{MAX_READ_REGISTERS}, got {max_registers}")
    if not 1 <= max_bits <= MAX_READ_BITS:
        raise ConfigError(f"max_bits must be 1..{MAX_READ_BITS}, got {max_bits}")
    seen: set[str] = set()
    for t in tags:
        if t.name in seen:
            raise ConfigError(f"tag {t.name!r}: duplicate name")
        seen.add(t.name)
        problem = tag_problem(t)
        if problem:
            raise ConfigError(f"tag {t.name!r}: {problem}")
        if not t.bits and t.count > max_registers:
            raise ConfigError(f"tag {t.name!r}: {t.count} registers exceed max_registers")


def plan_requests(
    tags: Sequence[ModbusTag],
    max_gap: int = 10,
    max_registers: int = MAX_READ_REGISTERS,
    *,
    max_bit_gap: int = 100,
    max_bits: int = MAX_READ_BITS,
) -> list[Request]:
    """Coalesced read requests covering every tag, ordered by (unit, table, address).

    A request never exceeds `max_registers` (`max_bits` for coils / discrete inputs) and never
    bridges more than `max_gap` unused registers (`max_bit_gap` unused bits). Raises
    ConfigError for tags that cannot be planned.
    """
    if max_gap < 0 or max_bit_gap < 0:
        raise ConfigError(f"max_gap and max_bit_gap must be >= 0, got {max_gap}, {max_bit_gap}")
    validate_tags(tags, max_registers, max_bits)
    groups: dict[tuple[int, str], list[ModbusTag]] = {}
    for t in tags:
        groups.setdefault((t.unit, t.table), []).append(t)
    out: list[Request] = []
    for (unit, table), members in sorted(groups.items()):
        gap, size = (max_bit_gap, max_bits) if table in BIT_TABLES else (max_gap, max_registers)
        members.sort(key=lambda t: (t.address, t.end))
        start = members[0].address
        end = members[0].end
        current: list[ModbusTag] = [members[0]]
        for t in members[1:]:
            if t.address - end <= gap and max(end, t.end) - start <= size:
                end = max(end, t.end)
                current.append(t)
                continue
            out.append(Request(unit, table, start, end - start, tuple(current)))
            start, end, current = t.address, t.end, [t]
        out.append(Request(unit, table, start, end - start, tuple(current)))
    return out
