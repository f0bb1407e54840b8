"""The rig's process PLC: an asyncua server exposing process tags as Double variables.

This module owns the OPC UA side of the rig's wire interface: one Double variable per tag
under `Objects/Loop/<name>` in namespace `hil.tags.NAMESPACE_URI` (string node ids
`Loop.<name>`, each with an EngineeringUnits property), the server's start/stop life cycle
(the plc-restart fault stops it and starts a fresh server on the same port) and the fast
server-side write path the plant uses at its tick rate. It does not own the plant.

Security: only the None policy is offered for now; `security_policies` is the seam where
signed/encrypted endpoints will plug in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC
from types import TracebackType

import structlog
from asyncua import ua
from asyncua.server.server import Server

from hil.tags import NAMESPACE_URI, OPCUA_FOLDER, TagDef

log = structlog.get_logger(__name__)

# UNECE Recommendation 20 codes for the units the rig uses (OPC UA Part 8, EUInformation).
_UNECE = {
    "l/min": "L2",
    "degC": "CEL",
    "%": "P1",
    "kW": "KWT",
    "bar": "BAR",
    "m": "MTR",
    "rpm": "RPM",
    "A": "AMP",
    "Wh": "WHR",
}
_UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
_PATH = "/edge-agent/hil/"


def _node_id(identifier: str, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def _eu_information(unit: str) -> ua.EUInformation:
    code = _UNECE.get(unit, "")
    unit_id = 0
    for ch in code:
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=_UNECE_URI,
        UnitId=unit_id if code else -1,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )


class OpcUaPlc:
    """An OPC UA server at `opc.tcp://host:port/edge-agent/hil/` serving `tags`.

    `port=0` picks a free port at the first start and keeps it for later restarts. Each start
    builds a fresh server (a real PLC restart loses sessions and subscriptions too); values
    written while stopped are kept and served after the next start.
    """

    def __init__(
        self,
        tags: Sequence[TagDef],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        security_policies: Sequence[ua.SecurityPolicyType] = (ua.SecurityPolicyType.NoSecurity,),
    ) -> None:
        self.tags = tuple(tags)
        if len({t.name for t in self.tags}) != len(self.tags):
            raise ValueError("tag names must be unique")
        self.host = host
        self.port = port
        self.security_policies = tuple(security_policies)
        self.namespace_index = 0
        self._values: dict[str, ua.DataValue] = {
            t.name: ua.DataValue(ua.Variant(0.0, ua.VariantType.Double)) for t in self.tags
        }
        self._node_ids: dict[str, ua.NodeId] = {}
        self._server: Server | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint URL; the port is the real one after the first start."""
        return f"opc.tcp://{self.host}:{self.port}{_PATH}"

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._server is not None

    def node_id(self, name: str) -> str:
        """The node id of one tag as a string, e.g. `ns=2;s=Loop.flow` (valid after start)."""
        return self._node_ids[name].to_string()

    async def start(self) -> None:
        """Build the address space and listen. No-op when running."""
        if self._server is not None:
            return
        # asyncua logs every session and subscription at INFO through stdlib logging.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-agent hil process plc")
        server.set_security_policy(list(self.security_policies))
        idx = await server.register_namespace(NAMESPACE_URI)
        folder = await server.nodes.objects.add_folder(
            _node_id(OPCUA_FOLDER, idx), ua.QualifiedName(OPCUA_FOLDER, idx)
        )
        node_ids: dict[str, ua.NodeId] = {}
        for tag in self.tags:
            nid = _node_id(f"{OPCUA_FOLDER}.{tag.name}", idx)
            var = await folder.add_variable(
                nid, ua.QualifiedName(tag.name, idx), 0.0, ua.VariantType.Double
            )
            await var.set_writable(False)
            prop = await var.add_property(
                _node_id(f"{OPCUA_FOLDER}.{tag.name}.EngineeringUnits", idx),
                "EngineeringUnits",
                _eu_information(tag.unit),
            )
            del prop
            node_ids[tag.name] = nid
            await server.write_attribute_value(nid, self._values[tag.name])
        try:
            await server.start()
        except OSError:
            await server.stop()
            raise
        if server.bserver is not None:
            self.port = int(server.bserver.port)
        self.namespace_index = idx
        self._node_ids = node_ids
        self._server = server
        log.info("opcua plc started", endpoint=self.endpoint, tags=len(self.tags))

    async def stop(self) -> None:
        """Close every session and the listener, freeing the port. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        # The server's clock task sleeps 1 s between ticks and stop() waits for it; end it now
        # (asyncio.wait neither raises the task's CancelledError nor swallows ours).
        clock = server.iserver.time_task
        if clock is not None:
            server.iserver.time_task = None
            clock.cancel()
            await asyncio.wait([clock], timeout=5.0)
        await server.stop()
        log.info("opcua plc stopped", endpoint=self.endpoint)

    async def write_values(self, values: Mapping[str, float], source_ts: float) -> None:
        """Set the values of this PLC's tags with SourceTimestamp `source_ts` (Unix seconds).

        Names this PLC does not serve are ignored. Uses the server-side attribute write, which
        bypasses the request machinery but still feeds monitored items.
        """
        src = ua.DateTime.fromtimestamp(source_ts, UTC)
        now = ua.DateTime.now(UTC)
        server = self._server
        for name, value in values.items():
            if name not in self._values:
                continue
            dv = ua.DataValue(
                ua.Variant(float(value), ua.VariantType.Double),
                SourceTimestamp=src,
                ServerTimestamp=now,
            )
            self._values[name] = dv
            if server is not None:
                await server.write_attribute_value(self._node_ids[name], dv)

    async def __aenter__(self) -> OpcUaPlc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
