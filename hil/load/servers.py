"""The load rig's servers: one Modbus TCP or OPC UA server serving a bank's value matrix.

The rig's own PLCs (`hil.plc_modbus.ModbusPlc`, `hil.plc_opcua.OpcUaPlc`) write tag by tag
from a dict and create their OPC UA variables one at a time; at 10,000 tags both are the
bottleneck (creating 10,000 variables one by one takes ~46 s). These servers take the whole
matrix per tick instead:

- `ModbusLoadServer`: one register block (input registers, mirrored as holding registers),
  encoded with NumPy (float32 / uint32, ABCD) once per tick and served by
  `hil.load.modbus_server.LeanModbusServer` (pipelined reads, a few us per request), or with
  `server="pymodbus"` by pymodbus' server (one `async_setValues` per tick; ~120 us per
  request, one request at a time per connection): the former keeps the rig from being the
  bottleneck at 10,000 tags, the latter is kept to compare against.
- `OpcUaLoadServer`: every variable created in one AddNodes call on the server's internal
  session; each tick writes each variable's DataValue (Double) with the write time as
  SourceTimestamp, through the server-side write that feeds monitored items.

Both serve instance `j` of the process at `hil.load.layout.modbus_address(j, slot)` or
node id `ns=<idx>;s=<tag name>` in namespace `NAMESPACE_URI`. They own no timing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.load.layout import MODBUS_UNIT, NAMESPACE_URI, REGS_PER_INSTANCE, LoadTag, tag_name
from hil.load.modbus_server import LeanModbusServer, ModbusServerKind

_FC_INPUT = 4
_PATH = "/edge-agent/hil-load/"


class LoadServer(Protocol):
    """What a worker needs from a server."""

    @property
    def endpoint(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, values: npt.NDArray[np.float64], unix_s: float) -> None: ...


def register_image(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint16]:
    """The registers of a value matrix, big-endian: column 0 as uint32, the rest as float32."""
    n = values.shape[0]
    regs = np.empty((n, REGS_PER_INSTANCE), dtype=">u2")
    stamp = values[:, 0].astype(np.uint32).astype(">u4")
    regs[:, 0:2] = stamp.view(">u2").reshape(n, 2)
    regs[:, 2:] = values[:, 1:].astype(">f4").view(">u2").reshape(n, REGS_PER_INSTANCE - 2)
    return regs.ravel()


def encode_registers(values: npt.NDArray[np.float64]) -> list[int]:
    """`register_image` as a list of register values (what pymodbus' datastore takes)."""
    out: list[int] = register_image(values).astype(np.int64).tolist()
    return out


class ModbusLoadServer:
    """A Modbus TCP server on `host:port` (0: a free one) for `n_instances` instances."""

    def __init__(
        self,
        n_instances: int,
        host: str = "127.0.0.1",
        port: int = 0,
        server: ModbusServerKind = "lean",
    ) -> None:
        self.host = host
        self.port = port
        self.kind = server
        self.n_registers = n_instances * REGS_PER_INSTANCE
        self._lean: LeanModbusServer | None = None
        self._server: ModbusTcpServer | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        if self.kind == "lean":
            lean = LeanModbusServer(self.n_registers, MODBUS_UNIT, self.host, self.port)
            await lean.start()
            self.port, self._lean = lean.port, lean
            return
        block = SimData(address=0, values=[0] * self.n_registers, datatype=DataType.REGISTERS)
        server = ModbusTcpServer(
            SimDevice(id=MODBUS_UNIT, simdata=[block]), address=(self.host, self.port)
        )
        await server.serve_forever(background=True)
        listener: Any = server.transport
        self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        lean, self._lean = self._lean, None
        if lean is not None:
            await lean.stop()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated

    async def write(self, values: npt.NDArray[np.float64], unix_s: float) -> None:
        del unix_s  # Modbus has no timestamps: the stamp column carries the change time
        if self._lean is not None:
            self._lean.set_image(register_image(values).tobytes())
        elif self._server is not None:
            await self._server.async_setValues(MODBUS_UNIT, _FC_INPUT, 0, encode_registers(values))


def _std(identifier: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(identifier))


def _string_id(name: str, idx: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(idx))


def _folder_item(parent: ua.NodeId, nid: ua.NodeId, name: str, idx: int) -> ua.AddNodesItem:
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = ua.QualifiedName(name, idx)
    item.NodeClass = ua.NodeClass.Object
    item.ParentNodeId = parent
    item.ReferenceTypeId = _std(ObjectIds.Organizes)
    item.TypeDefinition = _std(ObjectIds.FolderType)
    item.NodeAttributes = attrs
    return item


def _variable_item(parent: ua.NodeId, nid: ua.NodeId, name: str, idx: int) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.DataType = _std(ObjectIds.Double)
    attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = ua.QualifiedName(name, idx)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = _std(ObjectIds.HasComponent)
    item.TypeDefinition = _std(ObjectIds.BaseDataVariableType)
    item.NodeAttributes = attrs
    return item


class OpcUaLoadServer:
    """An asyncua server at `opc.tcp://host:port/edge-agent/hil-load/` serving `tags`.

    `tags` are the process's tags; `rows[k]` / `cols[k]` place tag `k` in the value matrix.
    """

    def __init__(
        self, tags: list[LoadTag], first_instance: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.tags = tags
        self.host = host
        self.port = port
        self.rows = np.array([t.instance - first_instance for t in tags], dtype=np.intp)
        self.cols = np.array([t.slot for t in tags], dtype=np.intp)
        self._server: Server | None = None
        self._node_ids: list[ua.NodeId] = []

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{_PATH}"

    async def start(self) -> None:
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-agent hil load plc")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE_URI)
        folder = await server.nodes.objects.add_folder(
            _string_id("Load", idx), ua.QualifiedName("Load", idx)
        )
        self._node_ids = [_string_id(t.name, idx) for t in self.tags]
        # One folder per plant instance: asyncua scans a parent's references on every add,
        # so 10,000 variables in one folder would cost O(n**2).
        folders = {t.instance: _string_id(tag_name(t.instance, "plant"), idx) for t in self.tags}
        items = [
            _folder_item(folder.nodeid, nid, tag_name(i, "plant"), idx)
            for i, nid in folders.items()
        ]
        items += [
            _variable_item(folders[t.instance], nid, t.name, idx)
            for nid, t in zip(self._node_ids, self.tags, strict=True)
        ]
        # One AddNodes call for every node (one call per variable is far slower).
        results = await server.iserver.isession.add_nodes(items)
        for res in results:
            res.StatusCode.check()
        await server.start()
        if server.bserver is not None:
            self.port = int(server.bserver.port)
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        clock = server.iserver.time_task
        if clock is not None:
            # The server's clock task sleeps 1 s between ticks and stop() would wait for it.
            server.iserver.time_task = None
            clock.cancel()
            await asyncio.wait([clock], timeout=5.0)
        await server.stop()

    async def write(self, values: npt.NDArray[np.float64], unix_s: float) -> None:
        server = self._server
        if server is None:
            return
        src = ua.DateTime.fromtimestamp(unix_s, UTC)
        aspace = server.iserver.aspace
        attr = AttributeIds.Value
        double = ua.VariantType.Double
        flat = values[self.rows, self.cols].tolist()
        for nid, v in zip(self._node_ids, flat, strict=True):
            dv = ua.DataValue(ua.Variant(v, double), SourceTimestamp=src, ServerTimestamp=src)
            await aspace.write_attribute_value(nid, attr, dv)
