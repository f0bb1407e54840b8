"""The services of the lean OPC UA load server: request dispatch, discovery, sessions, Read.

`ServerState.service` decodes one complete request with asyncua's `struct_from_binary`, runs
its handler and encodes the response with `struct_to_binary`; an unknown service gets a
ServiceFault BadServiceUnsupported, a request without a valid session BadSessionIdInvalid, a
request whose handler fails (logged, counted) BadInternalError.
It owns discovery (GetEndpoints, FindServers), sessions (Create, Activate, Close: a session
ends with its connection or CloseSession) and Read; the subscription services are
`hil.load.opcua_subscriptions.SubscriptionServices`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds as O
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, struct_to_binary

from hil.load import opcua_publish as pub
from hil.load.opcua_subscriptions import (
    ServiceFaultError,
    Session,
    SubscriptionServices,
    cancel,
    fault,
    numeric_nodeid,
    sc,
)

if TYPE_CHECKING:
    from hil.load.opcua_channel import Connection

log = logging.getLogger(__name__)

SC = StatusCodes
_NONE_URI: Final = "http://opcfoundation.org/UA/SecurityPolicy#None"
_TCP_PROFILE: Final = "http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary"
_APP_URI: Final = "urn:edge-agent:lean-opcua-server"
_A = AttributeIds


class ServerState(SubscriptionServices):
    """Everything the server's connections share: sessions, counters, the value clock."""

    def __init__(self, n_tags: int, period_ms: int, namespace: str) -> None:
        self.n_tags = n_tags
        self.period_ms = period_ms
        self.namespaces = ["http://opcfoundation.org/UA/", _APP_URI, namespace]
        self.endpoint = ""
        self.started = datetime.now(UTC)
        self.connections: set[Connection] = set()
        self.sessions: dict[tuple[int, Any], Session] = {}
        self.malformed = 0
        self.truncated = 0
        self.notifications = 0  # data changes sent
        self.publish_responses = 0
        self.unsupported = 0
        self.internal_errors = 0
        self._ids = 0
        table: list[tuple[str, Callable[..., Any], bool]] = [
            ("GetEndpoints", self._get_endpoints, False),
            ("FindServers", self._find_servers, False),
            ("CreateSession", self._create_session, False),
            ("ActivateSession", self._activate, False),
            ("CloseSession", self._close_session, True),
            ("Read", self._read, True),
            ("CreateSubscription", self._create_sub, True),
            ("ModifySubscription", self._modify_sub, True),
            ("SetPublishingMode", self._set_mode, True),
            ("DeleteSubscriptions", self._delete_subs, True),
            ("CreateMonitoredItems", self._create_items, True),
            ("DeleteMonitoredItems", self._delete_items, True),
            ("Publish", self._publish, True),
            ("Republish", self._republish, True),
        ]
        # request type id -> (request class, handler, needs an activated session)
        self._handlers: dict[int, tuple[Any, Callable[..., Any], bool]] = {
            getattr(O, f"{name}Request_Encoding_DefaultBinary"): (
                getattr(ua, f"{name}Request"),
                fn,
                needs,
            )
            for name, fn, needs in table
        }

    def new_id(self) -> int:
        """A fresh id for a channel, session or subscription."""
        self._ids += 1
        return self._ids

    def cycle_now(self) -> int:
        return int(time.time() * 1000.0 // self.period_ms)

    # -- dispatch ------------------------------------------------------------------------------

    def service(self, conn: Connection, request_id: int, body: bytes) -> None:
        """Answer one complete request; a body that cannot be decoded raises (the connection
        closes)."""
        buf = Buffer(body)
        tid = nodeid_from_binary(buf)
        entry = self._handlers.get(cast(int, tid.Identifier)) if tid.NamespaceIndex == 0 else None
        if entry is None:
            hdr = struct_from_binary(ua.RequestHeader, buf)
            self.unsupported += 1
            log.info("unsupported service %s", tid.to_string())
            conn.send(fault(hdr.RequestHandle, SC.BadServiceUnsupported), request_id)
            return
        cls, handler, needs_session = entry
        log.debug("request %s", cls.__name__)
        req = struct_from_binary(cls, Buffer(body))
        handle = req.RequestHeader.RequestHandle
        try:
            session = None
            if needs_session:
                session = self._session_of(conn, req.RequestHeader.AuthenticationToken)
            rsp = handler(conn, request_id, req, session)
        except ServiceFaultError as exc:
            conn.send(fault(handle, exc.code), request_id)
            return
        except Exception:  # a request this server cannot handle: a fault, the link stays
            self.internal_errors += 1
            log.exception("%s failed", cls.__name__)
            conn.send(fault(handle, SC.BadInternalError), request_id)
            return
        if rsp is not None:
            rsp.ResponseHeader.RequestHandle = handle
            rsp.ResponseHeader.Timestamp = datetime.now(UTC)
            conn.send(struct_to_binary(rsp), request_id)

    def _session_of(self, conn: Connection, token: ua.NodeId) -> Session:
        session = self.sessions.get((token.NamespaceIndex, token.Identifier))
        if session is None or session.conn is not conn:
            raise ServiceFaultError(SC.BadSessionIdInvalid)
        if not session.activated:
            raise ServiceFaultError(SC.BadSessionNotActivated)
        return session

    # -- discovery and sessions ----------------------------------------------------------------

    def _application(self) -> ua.ApplicationDescription:
        return ua.ApplicationDescription(
            ApplicationUri=_APP_URI,
            ProductUri=_APP_URI,
            ApplicationName=ua.LocalizedText("edge-agent lean OPC UA load server"),
            ApplicationType=ua.ApplicationType.Server,
            DiscoveryUrls=[self.endpoint],
        )

    def _endpoints(self) -> list[ua.EndpointDescription]:
        return [
            ua.EndpointDescription(
                EndpointUrl=self.endpoint,
                Server=self._application(),
                SecurityMode=ua.MessageSecurityMode.None_,
                SecurityPolicyUri=_NONE_URI,
                UserIdentityTokens=[
                    ua.UserTokenPolicy(PolicyId="anonymous", TokenType=ua.UserTokenType.Anonymous)
                ],
                TransportProfileUri=_TCP_PROFILE,
                SecurityLevel=0,
            )
        ]

    def _get_endpoints(self, conn: Connection, rid: int, req: Any, s: None) -> Any:
        rsp = ua.GetEndpointsResponse()
        rsp.Endpoints = self._endpoints()
        return rsp

    def _find_servers(self, conn: Connection, rid: int, req: Any, s: None) -> Any:
        rsp = ua.FindServersResponse()
        rsp.Servers = [self._application()]
        return rsp

    def _create_session(self, conn: Connection, rid: int, req: Any, s: None) -> Any:
        n = self.new_id()
        token = numeric_nodeid(int.from_bytes(os.urandom(4), "little") >> 1, 1)
        timeout = min(max(req.Parameters.RequestedSessionTimeout or 60_000.0, 1000.0), 3.6e6)
        session = Session(numeric_nodeid(n, 1), token, conn, timeout)
        self.sessions[(token.NamespaceIndex, token.Identifier)] = session
        conn.sessions.append(session)
        rsp = ua.CreateSessionResponse()
        rsp.Parameters = ua.CreateSessionResult(
            SessionId=session.id,
            AuthenticationToken=token,
            RevisedSessionTimeout=timeout,
            ServerNonce=os.urandom(32),
            ServerEndpoints=self._endpoints(),
            ServerSignature=ua.SignatureData(),
            MaxRequestMessageSize=0,
        )
        return rsp

    def _activate(self, conn: Connection, rid: int, req: Any, s: None) -> Any:
        token = req.RequestHeader.AuthenticationToken
        session = self.sessions.get((token.NamespaceIndex, token.Identifier))
        if session is None:
            raise ServiceFaultError(SC.BadSessionIdInvalid)
        identity = req.Parameters.UserIdentityToken
        if identity is not None and not isinstance(identity, ua.AnonymousIdentityToken):
            raise ServiceFaultError(SC.BadIdentityTokenRejected)
        if session.conn is not conn:  # activated on another channel: it moves there
            session.conn.sessions.remove(session)
            session.conn = conn
            conn.sessions.append(session)
        session.activated = True
        rsp = ua.ActivateSessionResponse()
        rsp.Parameters = ua.ActivateSessionResult(ServerNonce=os.urandom(32))
        return rsp

    def close_session(self, session: Session) -> None:
        """End a session: its subscriptions stop, its queued publish requests are answered."""
        self.sessions.pop((session.token.NamespaceIndex, session.token.Identifier), None)
        if session in session.conn.sessions:
            session.conn.sessions.remove(session)
        for sub in session.subs.values():
            cancel(sub)
        session.subs.clear()
        while session.requests:
            p = session.requests.popleft()
            if not p.conn.closed:
                p.conn.send(fault(p.handle, SC.BadSessionClosed), p.request_id)

    def _close_session(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        self.close_session(session)
        return ua.CloseSessionResponse()

    # -- Read ----------------------------------------------------------------------------------

    def node_index(self, nid: ua.NodeId) -> int | None:
        """The variable index of `ns=2;s=v<i>`, None for any other node."""
        ident = nid.Identifier
        if nid.NamespaceIndex != 2 or not isinstance(ident, str) or ident[:1] != "v":
            return None
        digits = ident[1:]
        if not digits.isascii() or not digits.isdigit() or str(int(digits)) != digits:
            return None
        i = int(digits)
        return i if i < self.n_tags else None

    def _server_value(self, ident: int) -> ua.Variant | None:
        now = datetime.now(UTC)
        values: dict[int, ua.Variant] = {
            O.Server_NamespaceArray: ua.Variant(self.namespaces, ua.VariantType.String),
            O.Server_ServerArray: ua.Variant([_APP_URI], ua.VariantType.String),
            O.Server_ServerStatus_State: ua.Variant(0, ua.VariantType.Int32),
            O.Server_ServerStatus_CurrentTime: ua.Variant(now, ua.VariantType.DateTime),
            O.Server_ServerStatus_StartTime: ua.Variant(self.started, ua.VariantType.DateTime),
            O.Server_ServiceLevel: ua.Variant(255, ua.VariantType.Byte),
        }
        if ident == O.Server_ServerStatus:
            status = ua.ServerStatusDataType(
                StartTime=self.started, CurrentTime=now, State=ua.ServerState.Running
            )
            return ua.Variant(status, ua.VariantType.ExtensionObject)
        return values.get(ident)

    def read_one(self, rv: ua.ReadValueId, cycle: int) -> ua.DataValue:
        """The DataValue of one ReadValueId."""
        nid, attr = rv.NodeId, rv.AttributeId
        now = cast(ua.DateTime, datetime.now(UTC))
        if nid.NamespaceIndex == 0 and isinstance(nid.Identifier, int):
            variant = self._server_value(nid.Identifier)
            if variant is None:
                return ua.DataValue(StatusCode=sc(SC.BadNodeIdUnknown))
            if attr != _A.Value:
                return ua.DataValue(StatusCode=sc(SC.BadAttributeIdInvalid))
            return ua.DataValue(
                variant,
                SourceTimestamp=now,
                ServerTimestamp=now,
            )
        i = self.node_index(nid)
        if i is None:
            return ua.DataValue(StatusCode=sc(SC.BadNodeIdUnknown))
        if attr == _A.Value:
            src = datetime.fromtimestamp(cycle * self.period_ms / 1000.0, UTC)
            return ua.DataValue(
                ua.Variant(pub.value(i, cycle), ua.VariantType.Double),
                SourceTimestamp=cast(ua.DateTime, src),
                ServerTimestamp=now,
            )
        by_attr: dict[int, ua.Variant] = {
            _A.DataType: ua.Variant(numeric_nodeid(O.Double, 0), ua.VariantType.NodeId),
            _A.NodeClass: ua.Variant(int(ua.NodeClass.Variable), ua.VariantType.Int32),
            _A.BrowseName: ua.Variant(ua.QualifiedName(f"v{i}", 2), ua.VariantType.QualifiedName),
            _A.DisplayName: ua.Variant(ua.LocalizedText(f"v{i}"), ua.VariantType.LocalizedText),
            _A.ValueRank: ua.Variant(-1, ua.VariantType.Int32),
            _A.AccessLevel: ua.Variant(1, ua.VariantType.Byte),
            _A.UserAccessLevel: ua.Variant(1, ua.VariantType.Byte),
        }
        variant = by_attr.get(attr)
        if variant is None:
            return ua.DataValue(StatusCode=sc(SC.BadAttributeIdInvalid))
        return ua.DataValue(variant)

    def _read(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        cycle = self.cycle_now()
        rsp = ua.ReadResponse()
        rsp.Results = [self.read_one(rv, cycle) for rv in req.Parameters.NodesToRead]
        return rsp
