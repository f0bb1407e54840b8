"""Modbus TCP client driver: planned coalesced reads decoded by a typed codec, checked writes.

Modules: `wire` (frames and PDUs), `link` (one connection, requests in flight, error counts),
`codec` (types and byte orders), `plan` (request planning), `driver` (units, poll groups,
samples, writes), `config` (the `[[drivers]] kind = "modbus"` schema).
"""

from drivers.modbus import codec
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import ModbusTag, Request, plan_requests
from drivers.modbus.write import WriteRefusedError, WriteResult

__all__ = [
    "ModbusDriver",
    "ModbusTag",
    "Request",
    "WriteRefusedError",
    "WriteResult",
    "codec",
    "plan_requests",
]
