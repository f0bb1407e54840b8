"""The `[[drivers]] kind = "modbus"` schema: connection, units, poll groups, the typed tag map.

Owns the TOML shape of a Modbus driver entry, its cross-field checks (`problems`, each naming
the key and the fix) and `build()`. A tag's Modbus unit id is `unit_id` (the driver's
`unit_id` is the default), because `unit` is every tag's engineering unit.

    [[drivers]]
    kind = "modbus"
    name = "drive"
    host = "127.0.0.1"
    port = 502
    unit_id = 1                # default unit of the tags
    poll_interval_s = 0.1      # how often the agent calls read(); tags without a group
    timeout_s = 1.0            # per request, no retry: a dead unit is noticed after this
    framing = "tcp"            # or "rtu" (RTU frames over TCP, e.g. a serial gateway)
    max_outstanding = 1        # requests in flight on the connection (tcp framing only)
    max_gap = 10               # unused registers a read may bridge (max_bit_gap for bits)
    max_registers = 125        # per read (max_bits = 2000 for coils / discrete inputs)

    [[drivers.groups]]         # optional poll groups with their own interval
    name = "slow"
    poll_interval_s = 5.0

    [[drivers.tags]]
    name = "serial"
    table = "holding"          # holding | input | coil | discrete
    address = 100
    type = "string"            # bool, int16, uint16, int32, uint32, int64, uint64,
    length = 8                 #   float32, float64, string (length in registers)
    group = "slow"
    unit_id = 2                # overrides the driver's unit_id
    # order = "ABCD" | "CDAB" | "BADC" | "DCBA"; bit = 0..15 for a bool in a register;
    # scale, offset; writable = true to allow writes (holding and coil only)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.config import NAME_PATTERN, Strict, TagBase
from drivers.modbus import codec
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import DEFAULT_GROUP, ModbusTag

TypeName = Literal[
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
BIT_TABLES = ("coil", "discrete")


class ModbusTagConfig(TagBase):
    address: int = Field(ge=0, le=65535)
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    type: TypeName | None = Field(default=None, description="default: bool for bits, else uint16")
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=125)
    unit_id: int | None = Field(default=None, ge=0, le=255)
    group: str | None = None
    writable: bool = False

    @property
    def resolved_type(self) -> str:
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES else "uint16"

    @property
    def width(self) -> int:
        """Registers (or bits) the tag occupies; 1 when its type is unusable."""
        t = self.resolved_type
        if self.table in BIT_TABLES or t == "bool":
            return 1
        if t == "string":
            return self.length or 1
        return codec.register_count(t)

    def problems(self, where: str, max_registers: int) -> list[str]:
        """Field combinations that cannot work, each with its key and the fix."""
        out: list[str] = []
        t = self.resolved_type
        bits = self.table in BIT_TABLES
        if bits and t != "bool":
            out.append(f"{where}.type: a {self.table} is one bit; use type = 'bool'")
        if self.bit is not None and bits:
            out.append(f"{where}.bit: only for a bool in a holding or input register; remove it")
        elif self.bit is not None and t != "bool":
            out.append(f"{where}.bit: only for type = 'bool'; remove it or set type = 'bool'")
        if not bits and t == "bool" and self.bit is None:
            out.append(f"{where}.bit: a bool in a {self.table} register needs bit = 0..15")
        if t == "string" and self.length is None:
            out.append(f"{where}.length: a string needs length = its size in registers")
        if t != "string" and self.length is not None:
            out.append(f"{where}.length: only for type = 'string'; remove it")
        if t == "string" and self.order not in ("ABCD", "BADC"):
            out.append(f"{where}.order: a string's order is 'ABCD' or 'BADC' (byte swap only)")
        if t == "string" and (self.length or 0) > max_registers:
            out.append(f"{where}.length: {self.length} registers exceed max_registers")
        if t in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            out.append(f"{where}.scale: scale and offset do not apply to {t}; remove them")
        if self.scale == 0.0:
            out.append(f"{where}.scale: must not be 0")
        if self.writable and self.table not in ("holding", "coil"):
            out.append(
                f"{where}.writable: a {self.table} is read-only in Modbus; "
                "only holding registers and coils can be written"
            )
        if self.address + self.width > 65536:
            out.append(f"{where}.address: {t} at {self.address} runs past address 65535")
        return out


class ModbusGroupConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    poll_interval_s: float = Field(gt=0)


class ModbusDriverConfig(Strict):
    kind: Literal["modbus"]
    name: str = Field(pattern=NAME_PATTERN)
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float = Field(default=0.1, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    framing: Literal["tcp", "rtu"] = "tcp"
    max_outstanding: int = Field(default=1, ge=1, le=16)
    max_gap: int = Field(default=10, ge=0)
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bit_gap: int = Field(default=100, ge=0)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    groups: list[ModbusGroupConfig] = Field(default_factory=list)
    tags: list[ModbusTagConfig] = Field(min_length=1)

    def problems(self, where: str) -> list[str]:
        """Cross-field problems, each prefixed with `where` (e.g. `drivers[1]`)."""
        problems: list[str] = []
        if self.timeout_s >= self.poll_interval_s * 20:
            problems.append(
                f"{where}.timeout_s: {self.timeout_s} s is too long for a poll interval "
                f"of {self.poll_interval_s} s; use at most {self.poll_interval_s * 20:g} s"
            )
        if self.timeout_s > 5.0:
            problems.append(
                f"{where}.timeout_s: {self.timeout_s} s would notice a dead unit only after "
                "that long; use at most 5 s"
            )
        if self.framing == "rtu" and self.max_outstanding > 1:
            problems.append(
                f"{where}.max_outstanding: RTU framing has no transaction id, so only one "
                "request can be in flight; set it to 1 or use framing = 'tcp'"
            )
        groups: dict[str, float] = {}
        for k, g in enumerate(self.groups):
            if g.name in groups:
                problems.append(f"{where}.groups[{k}].name: duplicate group {g.name!r}")
            groups[g.name] = g.poll_interval_s
            if g.poll_interval_s < self.poll_interval_s:
                problems.append(
                    f"{where}.groups[{k}].poll_interval_s: {g.poll_interval_s} s is shorter "
                    f"than the driver's poll_interval_s ({self.poll_interval_s} s), which "
                    "is how often it reads; raise it or lower the driver's"
                )
        # (unit, table, address) -> (first tag, bits taken; None = the whole register/bit)
        used: dict[tuple[int, str, int], tuple[str, set[int] | None]] = {}
        for j, t in enumerate(self.tags):
            at = f"{where}.tags[{j}]"
            problems.extend(t.problems(at, self.max_registers))
            if t.group is not None and t.group not in groups:
                problems.append(
                    f"{at}.group: poll group {t.group!r} is not defined; add a "
                    f"[[drivers.groups]] entry with name = {t.group!r} or remove the key"
                )
            unit = self.unit_id if t.unit_id is None else t.unit_id
            kind = "bit" if t.table in BIT_TABLES else "register"
            bit = t.bit if t.resolved_type == "bool" and t.table not in BIT_TABLES else None
            for addr in range(t.address, min(t.address + t.width, 65536)):
                key = (unit, t.table, addr)
                other = used.get(key)
                if other is None:
                    used[key] = (t.name, None if bit is None else {bit})
                    continue
                taken = other[1]
                if bit is not None and taken is not None and bit not in taken:
                    taken.add(bit)  # another bit of the same register: no overlap
                    continue
                problems.append(
                    f"{at}.address: {t.table} {kind} {addr} of unit {unit} used by "
                    f"{t.name!r} overlaps {other[0]!r}; fix the address, type, length or bit"
                )
                break
        return problems

    def build(self) -> ModbusDriver:
        """The driver for this entry."""
        return ModbusDriver(
            self.name,
            self.host,
            self.port,
            [
                ModbusTag(
                    t.name,
                    t.address,
                    t.resolved_type,
                    t.order,
                    t.table,
                    t.scale,
                    t.offset,
                    self.unit_id if t.unit_id is None else t.unit_id,
                    t.bit,
                    t.length or 0,
                    t.group or DEFAULT_GROUP,
                    t.writable,
                )
                for t in self.tags
            ],
            timeout_s=self.timeout_s,
            max_gap=self.max_gap,
            max_registers=self.max_registers,
            max_bit_gap=self.max_bit_gap,
            max_bits=self.max_bits,
            max_outstanding=self.max_outstanding,
            framing=self.framing,
            groups={g.name: g.poll_interval_s for g in self.groups},
        )
