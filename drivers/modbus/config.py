"""The `[[drivers]] kind = "modbus"` schema: connection, polling and the typed register map."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.config import NAME_PATTERN, Strict, TagBase
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import ModbusTag

REG_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


class ModbusTagConfig(TagBase):
    address: int = Field(ge=0, le=65535)
    table: Literal["holding", "input"] = "holding"
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "uint16"
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0


class ModbusDriverConfig(Strict):
    kind: Literal["modbus"]
    name: str = Field(pattern=NAME_PATTERN)
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float = Field(default=0.1, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    max_gap: int = Field(default=10, ge=0)
    max_registers: int = Field(default=125, ge=1, le=125)
    tags: list[ModbusTagConfig] = Field(min_length=1)

    def problems(self, where: str) -> list[str]:
        """Cross-field problems, each prefixed with `where` (e.g. `drivers[1]`)."""
        problems: list[str] = []
        if self.timeout_s >= self.poll_interval_s * 20:
            problems.append(
                f"{where}.timeout_s: {self.timeout_s} s is too long for a poll interval "
                f"of {self.poll_interval_s} s; use at most {self.poll_interval_s * 20:g} s"
            )
        used: dict[tuple[str, int], str] = {}
        for j, t in enumerate(self.tags):
            for reg in range(t.address, t.address + REG_WIDTH[t.type]):
                key = (t.table, reg)
                if key in used:
                    problems.append(
                        f"{where}.tags[{j}].address: {t.table} register {reg} of "
                        f"{t.name!r} overlaps {used[key]!r}; fix the address or the type"
                    )
                    break
                used[key] = t.name
            if t.address + REG_WIDTH[t.type] > 65536:
                problems.append(
                    f"{where}.tags[{j}].address: {t.type} at {t.address} runs past register 65535"
                )
        return problems

    def build(self) -> ModbusDriver:
        """The driver for this entry."""
        return ModbusDriver(
            self.name,
            self.host,
            self.port,
            [
                ModbusTag(
                    t.name, t.address, t.type, t.order, t.table, t.scale, t.offset, self.unit_id
                )
                for t in self.tags
            ],
            timeout_s=self.timeout_s,
            max_gap=self.max_gap,
            max_registers=self.max_registers,
        )
