"""The rig's process PLC: an asyncua server exposing process tags as Double variables.

This module owns the OPC UA side of the rig's wire interface: one Double variable per tag
under `Objects/Loop/<name>` in namespace `hil.tags.NAMESPACE_URI` (string node ids
`Loop.<name>`, each with an EngineeringUnits property), the server's start/stop life cycle
(the plc-restart fault stops it and starts a fresh server on the same port) and the fast
server-side write path the plant uses at its tick rate. It does not own the plant.
Its process variables are read-only for clients; `writable` nodes (`hil.tags.AGENT_NODES`, in
`Objects/Agent`) are the exception, kept across restarts like a PLC's retained memory.

Security: by default only the None policy with anonymous access (what the demo and the
integration tests use). `security_policies` adds signed/encrypted endpoints, served with a
self-signed server certificate kept in `pki_dir` (created on the first start and reused across
restarts, as a real PLC keeps its certificate); `users` (name -> password) turns on
username/password authentication, and `allow_anonymous=False` then refuses anonymous sessions.
The server accepts any client certificate (a test rig, not a trust store).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from hil.tags import AGENT_FOLDER, NAMESPACE_URI, OPCUA_FOLDER, TagDef, WritableNode

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
_APP_URI = "urn:edge-agent:hil:process-plc"
_ZERO: dict[str, object] = {"Boolean": False, "String": "", "Float": 0.0, "Double": 0.0}


class _Users(UserManager):
    """asyncua user manager: the configured users with their passwords, anonymous optional."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool) -> None:
        self._users = dict(users)
        self._anonymous = allow_anonymous

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        del iserver, certificate
        if username is None:
            return User(role=UserRole.User) if self._anonymous else None
        expected = self._users.get(username)
        if expected is None or password is None:
            return None
        if not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return User(role=UserRole.User, name=username)


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
        pki_dir: Path | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = True,
        writable: Sequence[WritableNode] = (),
    ) -> None:
        self.tags = tuple(tags)
        self.writable = tuple(writable)
        if len({t.name for t in self.tags}) != len(self.tags):
            raise ValueError("tag names must be unique")
        self.host = host
        self.port = port
        self.security_policies = tuple(security_policies)
        self.users = dict(users or {})
        self.allow_anonymous = allow_anonymous
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.pki_dir = pki_dir
        self.server_certificate: bytes | None = None  # DER, after the first secured start
        self.namespace_index = 0
        self._values: dict[str, ua.DataValue] = {
            t.name: ua.DataValue(ua.Variant(0.0, ua.VariantType.Double)) for t in self.tags
        }
        self._node_ids: dict[str, ua.NodeId] = {}
        self._written: dict[str, ua.Variant] = {
            w.name: ua.Variant(_ZERO.get(w.data_type, 0), getattr(ua.VariantType, w.data_type))
            for w in self.writable
        }
        self._server: Server | None = None
        self._odd: dict[str, ua.Variant] = {}  # see `add_odd_variable`

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

    def session_count(self) -> int:
        """Sessions the server holds right now (0 when stopped)."""
        server = self._server
        if server is None:
            return 0
        return len(server.iserver._external_sessions)  # asyncua keeps no public count

    async def _load_certificate(self, server: Server) -> None:
        if self.pki_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hil-pki-")
            self.pki_dir = Path(self._tmp.name)
        cert_file, key_file = self.pki_dir / "server_cert.der", self.pki_dir / "server_key.pem"
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        await setup_self_signed_certificate(
            key_file,
            cert_file,
            _APP_URI,
            socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"organizationName": "edge-agent hil"},
        )
        await server.load_certificate(str(cert_file))
        await server.load_private_key(str(key_file))
        self.server_certificate = cert_file.read_bytes()

    async def start(self) -> None:
        """Build the address space and listen. No-op when running."""
        if self._server is not None:
            return
        # asyncua logs every session and subscription at INFO through stdlib logging.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server(user_manager=_Users(self.users, self.allow_anonymous))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-agent hil process plc")
        server.set_security_policy(list(self.security_policies))
        if any(p != ua.SecurityPolicyType.NoSecurity for p in self.security_policies):
            await server.set_application_uri(_APP_URI)
            await self._load_certificate(server)
        tokens: list[type] = [ua.UserNameIdentityToken] if self.users else []
        if self.allow_anonymous or not self.users:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
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
        if self.writable:
            agent = await server.nodes.objects.add_folder(
                _node_id(AGENT_FOLDER, idx), ua.QualifiedName(AGENT_FOLDER, idx)
            )
            for w in self.writable:
                nid = _node_id(f"{AGENT_FOLDER}.{w.name}", idx)
                variant = self._written[w.name]
                var = await agent.add_variable(
                    nid, ua.QualifiedName(w.name, idx), variant.Value, variant.VariantType
                )
                await var.set_writable(True)
                node_ids[w.name] = nid
        await self._add_odd_variables(folder, idx, node_ids)
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
        for w in self.writable:  # retained across the restart
            dv = await server.get_node(self._node_ids[w.name]).read_data_value()
            if dv.Value is not None:
                self._written[w.name] = dv.Value
        await server.stop()
        log.info("opcua plc stopped", endpoint=self.endpoint)

    async def written(self, name: str) -> object:
        """The current value of writable node `name` (what clients wrote last)."""
        server = self._server
        if server is None:
            return self._written[name].Value
        return await server.get_node(self._node_ids[name]).read_value()

    def cleanup(self) -> None:
        """Remove a temporary certificate folder made by `start` (stop first)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

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

    # Faults in the data itself, for the driver contract tests --------------------------------

    async def add_odd_variable(self, name: str, value: ua.Variant) -> str:
        """Serve one more variable `Loop.<name>` whose data type is `value`'s own (a String, a
        Boolean, an array ...): a node of another type than a client configured as a number.
        Kept across restarts; returns its node id in the namespace-URI form."""
        if name in self._values or name in self._odd or name in self._node_ids:
            raise ValueError(f"variable {name!r} exists already")
        self._odd[name] = value
        server = self._server
        if server is not None:
            folder = server.get_node(_node_id(OPCUA_FOLDER, self.namespace_index))
            await self._add_odd_variables(folder, self.namespace_index, self._node_ids, [name])
        return f"nsu={NAMESPACE_URI};s={OPCUA_FOLDER}.{name}"

    async def _add_odd_variables(
        self, folder: Any, idx: int, node_ids: dict[str, ua.NodeId], names: Sequence[str] = ()
    ) -> None:
        for name in names or list(self._odd):
            value = self._odd[name]
            nid = _node_id(f"{OPCUA_FOLDER}.{name}", idx)
            var = await folder.add_variable(nid, ua.QualifiedName(name, idx), value)
            await var.set_writable(False)
            node_ids[name] = nid

    async def write_status(
        self, name: str, value: float, status: int, source_ts: float, server_ts: float
    ) -> None:
        """Set one tag's value with StatusCode `status` (e.g. an Uncertain or a Bad code) and
        both timestamps (Unix seconds). A Bad code makes the server serve a null value."""
        if name not in self._values:
            raise ValueError(f"{name!r} is not a tag of this PLC")
        dv = ua.DataValue(
            ua.Variant(float(value), ua.VariantType.Double),
            StatusCode=ua.StatusCode(ua.UInt32(status)),
            SourceTimestamp=ua.DateTime.fromtimestamp(source_ts, UTC),
            ServerTimestamp=ua.DateTime.fromtimestamp(server_ts, UTC),
        )
        self._values[name] = dv
        if self._server is not None:
            await self._server.write_attribute_value(self._node_ids[name], dv)

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
        self.cleanup()
