"""The rig's tag table: every value the simulated PLCs expose, where and how.

This is the single description of the rig's wire interface. The plant simulation produces
values under these names; the OPC UA PLC (`process`) publishes them as variables under
`Objects/Loop/<name>` in namespace `NAMESPACE_URI`, with string node ids `ns=<idx>;s=Loop.<name>`;
the Modbus PLC (`drive`, a variable-frequency drive with its motor) publishes them in input
registers of unit `DRIVE_UNIT`, encoded as given. `AGENT_NODES` are the variables a PLC program
sets aside for the agent to write its findings into (`Objects/Agent/<name>`, served when the
OPC UA PLC is started with `writable=`). The demo config (`configs/demo.toml`) and a
test that checks it against this table keep both sides in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NAMESPACE_URI = "urn:edge-agent:hil"
OPCUA_FOLDER = "Loop"
AGENT_FOLDER = "Agent"
DRIVE_UNIT = 1

Plc = Literal["process", "drive"]
RegType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
NodeType = Literal["Boolean", "UInt16", "Int32", "UInt32", "Float", "Double", "String"]


@dataclass(frozen=True, slots=True)
class TagDef:
    """One rig tag. `address`, `reg_type`, `order` and `scale` only apply to the drive PLC.

    Modbus engineering value = raw * scale. `lo`/`hi` is the physically plausible range.
    """

    name: str
    plc: Plc
    unit: str
    description: str
    lo: float
    hi: float
    address: int = -1
    reg_type: RegType = "float32"
    order: WordOrder = "ABCD"
    scale: float = 1.0


TAGS: tuple[TagDef, ...] = (
    # Process PLC (OPC UA): setpoints, controller outputs, process measurements.
    TagDef("flow_sp", "process", "l/min", "flow setpoint", 0, 80),
    TagDef("temp_sp", "process", "degC", "fluid temperature setpoint", 0, 90),
    TagDef("pump_speed", "process", "%", "pump speed command (flow PID output)", 0, 100),
    TagDef("heater_power", "process", "kW", "heater power (temperature PID output)", 0, 5),
    TagDef("valve_in", "process", "%", "inlet valve position", 0, 100),
    TagDef("valve_out", "process", "%", "outlet valve position", 0, 100),
    TagDef("flow", "process", "l/min", "loop volume flow", 0, 100),
    TagDef("pressure", "process", "bar", "pressure after the pump", 0, 6),
    TagDef("level", "process", "m", "tank level", 0, 1.5),
    TagDef("fluid_temp", "process", "degC", "fluid temperature (thermocouple)", 0, 100),
    # Drive PLC (Modbus TCP, input registers of unit DRIVE_UNIT).
    TagDef("motor_speed", "drive", "rpm", "motor speed", 0, 3200, 0, "uint16"),
    TagDef("motor_current", "drive", "A", "motor current", 0, 10, 1, "float32", "CDAB"),
    TagDef(
        "motor_temp", "drive", "degC", "motor body temperature", -20, 150, 3, "int16", scale=0.1
    ),
    TagDef("motor_power", "drive", "kW", "motor electrical power", 0, 3, 4, "float32", "ABCD"),
    TagDef("vibration", "drive", "g", "pump vibration RMS", 0, 2, 6, "float32", "BADC"),
    TagDef("energy", "drive", "Wh", "energy counter", 0, 2**31 - 1, 8, "int32", "ABCD"),
    TagDef("status_word", "drive", "", "bit0 running, bit1 fault", 0, 65535, 10, "uint16"),
)

BY_NAME: dict[str, TagDef] = {t.name: t for t in TAGS}


@dataclass(frozen=True, slots=True)
class WritableNode:
    """A variable clients may write, `Objects/Agent/<name>` with node id `Agent.<name>`, of
    OPC UA built-in type `data_type`, 0 (or empty) at start."""

    name: str
    data_type: NodeType
    description: str


AGENT_NODES: tuple[WritableNode, ...] = (
    WritableNode("alarm_word", "UInt16", "one bit per alarmed output, written by the agent"),
    WritableNode("health", "Int32", "agent health: 0 ok, 1 degraded, 2 fault"),
    WritableNode("heartbeat", "UInt32", "agent heartbeat counter"),
)


def tags_of(plc: Plc) -> tuple[TagDef, ...]:
    """The tags one PLC serves, in table order."""
    return tuple(t for t in TAGS if t.plc == plc)


def register_count(reg_type: RegType) -> int:
    """Number of 16-bit registers a value of `reg_type` occupies."""
    return 1 if reg_type in ("int16", "uint16") else 2
