"""Checked writes to one OPC UA variable: the node's own data type, one Write, read back.

This module owns the write path of the OPC UA driver: which built-in type a value is sent as
(`variant_type`: the node's DataType attribute, read together with the old value), whether the
value fits it (`to_variant`), the exchange (read the old value and the DataType in one Read
call, one Write call of the Value attribute only, read back and compare) and its outcome, the
same `WriteResult` the Modbus driver gives. The driver (`drivers.opcua.driver`) checks that the
tag is writable.

Pitfalls it avoids (each a classic "the write fails on a real PLC" report):
- the Variant must carry the node's exact built-in type (a Python int sent as Int64 to a UInt16
  node, or a float sent as Double to a Float node, is refused with BadTypeMismatch), so the
  type comes from the node, not from the Python value;
- asyncua's `write_value` stamps a SourceTimestamp (and every DataValue carries a Good
  StatusCode), which many PLCs refuse with BadWriteNotSupported: only the value is sent;
- a per-node status code (BadNotWritable, BadUserAccessDenied, BadTypeMismatch, BadOutOfRange
  ...) does not raise in asyncua's raw Write service call: it is read from the results and
  becomes a `rejected` result, as does a service fault.

It never retries: a Write whose answer does not come may have taken effect (`unknown`).
"""

from __future__ import annotations

import asyncio
import math
import struct

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.base import WriteRefusedError, WriteResult
from drivers.opcua.subscription import status_name
from drivers.opcua.tags import WRITABLE_TYPE_NAMES

__all__ = ["WriteRefusedError", "WriteResult", "to_variant", "variant_type", "write_node"]

_VT = ua.VariantType
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    _VT.SByte: (-(2**7), 2**7 - 1),
    _VT.Byte: (0, 2**8 - 1),
    _VT.Int16: (-(2**15), 2**15 - 1),
    _VT.UInt16: (0, 2**16 - 1),
    _VT.Int32: (-(2**31), 2**31 - 1),
    _VT.UInt32: (0, 2**32 - 1),
    _VT.Int64: (-(2**63), 2**63 - 1),
    _VT.UInt64: (0, 2**64 - 1),
}
WRITABLE_TYPES: dict[str, ua.VariantType] = {n: ua.VariantType[n] for n in WRITABLE_TYPE_NAMES}
"""The built-in types a value can be written as, by name (what `data_type` in config takes)."""

# Namespace-0 DataType ids: the built-in types are 1..12 (Boolean .. String, the same numbers
# as their VariantType); a few standard subtypes are encoded as their base type.
_SUBTYPES = {290: _VT.Double, 288: _VT.UInt32, 289: _VT.UInt32, 17588: _VT.UInt32}
_ENUMERATION = 29  # sent as Int32
_FLOAT_MAX = 3.4028234663852886e38
_GUARD_S = 0.5


def variant_type(data_type: object, current: ua.Variant | None) -> ua.VariantType | None:
    """The built-in type to write for a node with DataType `data_type` (a NodeId) whose value
    is now `current`; None when it is not a type this module writes."""
    vt: ua.VariantType | None = None
    ident = data_type.Identifier if isinstance(data_type, ua.NodeId) else None
    if isinstance(data_type, ua.NodeId) and data_type.NamespaceIndex == 0:
        if isinstance(ident, int) and 1 <= ident <= 12:
            vt = _VT(ident)
        elif isinstance(ident, int) and ident in _SUBTYPES:
            vt = _SUBTYPES[ident]
        elif ident == _ENUMERATION:
            vt = _VT.Int32
    if vt is None and current is not None:
        # An abstract type (BaseDataType, Number, ...), an enumeration or a vendor's subtype
        # of a built-in one: the server holds the value in the type it expects back.
        vt = current.VariantType
    return vt if vt is not None and vt.name in WRITABLE_TYPES else None


def to_variant(value: float | str, vt: ua.VariantType, where: str) -> ua.Variant:
    """`value` as a Variant of type `vt`; WriteRefusedError when it does not fit."""
    if vt == _VT.String:
        if not isinstance(value, str):
            raise WriteRefusedError(f"{where} (String): needs a str, got {type(value).__name__}")
        return ua.Variant(value, vt)
    if isinstance(value, str) or not isinstance(value, int | float):
        raise WriteRefusedError(f"{where} ({vt.name}): needs a number, got {type(value).__name__}")
    if vt == _VT.Boolean:
        if value not in (0, 1):
            raise WriteRefusedError(f"{where} (Boolean): needs 0/1 or a bool, got {value!r}")
        return ua.Variant(bool(value), vt)
    if not math.isfinite(value):
        raise WriteRefusedError(f"{where} ({vt.name}): {value} cannot be written")
    if vt in _INT_RANGES:
        lo, hi = _INT_RANGES[vt]
        if not float(value).is_integer() or not lo <= int(value) <= hi:
            raise WriteRefusedError(
                f"{where} ({vt.name}): {value!r} is not a whole number in [{lo}, {hi}]"
            )
        return ua.Variant(int(value), vt)
    if vt == _VT.Float:
        if abs(value) > _FLOAT_MAX:
            raise WriteRefusedError(f"{where} (Float): {value} is out of float32 range")
        return ua.Variant(struct.unpack("<f", struct.pack("<f", value))[0], vt)
    return ua.Variant(float(value), vt)


def _plain(v: ua.Variant | None) -> float | str | None:
    """A read value as the result reports it: numbers as float, text as str."""
    x = None if v is None else v.Value
    if isinstance(x, str):
        return x
    if isinstance(x, bool | int | float):
        return float(x)
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "comm"


async def _read(
    client: Client, node_id: ua.NodeId, timeout_s: float, data_type: bool
) -> list[ua.DataValue]:
    params = ua.ReadParameters()
    params.TimestampsToReturn = ua.TimestampsToReturn.Neither
    attrs = [AttributeIds.Value, AttributeIds.DataType] if data_type else [AttributeIds.Value]
    params.NodesToRead = [ua.ReadValueId(NodeId=node_id, AttributeId=a) for a in attrs]
    async with asyncio.timeout(timeout_s + _GUARD_S):  # not wait_for: see channel.py
        got: list[ua.DataValue] = await client.uaclient.read(params)
    return got


def _value_only(variant: ua.Variant) -> ua.DataValue:
    """A DataValue that carries the value alone: no StatusCode, no timestamps (asyncua adds a
    Good status by default, and some PLCs refuse to have status or timestamps written)."""
    return ua.DataValue(variant, StatusCode=None)


def _bad(dv: ua.DataValue) -> str | None:
    code = dv.StatusCode
    if code is not None and code.value >> 30 >= 2:
        return status_name(code.value)
    return None


async def write_node(
    client: Client,
    node_id: ua.NodeId,
    tag: str,
    value: float | str,
    timeout_s: float,
    *,
    data_type: str | None = None,
) -> WriteResult:
    """Write `value` to the Value of `node_id` as the node's own type (or `data_type`, a name in
    `WRITABLE_TYPES`): read the old value and the DataType, write once, read back, compare.
    Raises WriteRefusedError (nothing written) when the value does not fit the type."""
    try:
        old_dv, *dt = await _read(client, node_id, timeout_s, data_type is None)
    except (TimeoutError, OSError, UaError) as exc:
        return WriteResult(tag, "not_sent", value, None, None, _why(exc))
    bad = _bad(old_dv) or (_bad(dt[0]) if dt else None)
    if bad is not None:
        return WriteResult(tag, "not_sent", value, None, None, bad)
    old = _plain(old_dv.Value)
    if data_type is not None:
        vt: ua.VariantType | None = WRITABLE_TYPES[data_type]
    else:
        vt = variant_type(dt[0].Value.Value if dt[0].Value else None, old_dv.Value)
    if vt is None:
        raise WriteRefusedError(
            f"tag {tag!r}: the node's data type cannot be written by this driver; set "
            f"data_type to one of {', '.join(WRITABLE_TYPES)} if it takes a built-in type"
        )
    variant = to_variant(value, vt, f"tag {tag!r}")
    params = ua.WriteParameters()
    params.NodesToWrite = [
        ua.WriteValue(NodeId=node_id, AttributeId=AttributeIds.Value, Value=_value_only(variant))
    ]
    try:
        async with asyncio.timeout(timeout_s + _GUARD_S):
            codes = await client.uaclient.write(params)
    except UaStatusCodeError as exc:  # a service fault: the server refused the whole request
        return WriteResult(tag, "rejected", value, old, None, status_name(exc.code))
    except (TimeoutError, OSError, UaError) as exc:
        return WriteResult(tag, "unknown", value, old, None, _why(exc))
    code = codes[0].value if codes else 0
    if code >> 30 >= 2:
        return WriteResult(tag, "rejected", value, old, None, status_name(code))
    try:
        (after,) = await _read(client, node_id, timeout_s, False)
    except (TimeoutError, OSError, UaError) as exc:
        return WriteResult(tag, "unverified", value, old, None, _why(exc))
    bad = _bad(after)
    if bad is not None:
        return WriteResult(tag, "unverified", value, old, None, bad)
    new = _plain(after.Value)
    same = after.Value is not None and after.Value.Value == variant.Value
    return WriteResult(tag, "written" if same else "mismatch", value, old, new)
