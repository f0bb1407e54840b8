"""Modbus TCP client driver: planned coalesced register reads decoded by a typed codec."""

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import ModbusTag, Request, plan_requests

__all__ = ["ModbusDriver", "ModbusTag", "Request", "plan_requests"]
