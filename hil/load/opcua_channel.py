"""One client connection of the lean OPC UA load server: the UA TCP and secure channel layers.

It owns the framing of Part 6 for security policy None: Hello/Acknowledge (the client's
buffer, message and chunk limits are kept for the responses), OpenSecureChannel (issue and
renew: a renewed token is used from the next response on), CloseSecureChannel, reassembly of
requests sent in several chunks, and the sequence numbers of the chunks it sends. Complete
requests go to `hil.load.opcua_services.ServerState.service`. Responses are chunked with
asyncua's `MessageChunk` (`send`), data-change responses with `hil.load.opcua_publish.frame`
(`send_hot`).

A frame that is malformed (unknown message type, impossible size, a body asyncua cannot decode,
a message out of order) gets an ERR message and closes the connection, counted in
`ServerState.malformed`; a connection that closes in the middle of a frame is counted in
`ServerState.truncated`. Neither affects other connections.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

from asyncua import ua
from asyncua.common.connection import MessageChunk
from asyncua.common.utils import Buffer
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import (
    header_from_binary,
    struct_from_binary,
    struct_to_binary,
    uatcp_to_binary,
)

from hil.load.opcua_publish import CHUNK_OVERHEAD, ITEM_SIZE, MESSAGE_OVERHEAD, RETAINED, frame
from hil.load.opcua_subscriptions import fault

if TYPE_CHECKING:
    from hil.load.opcua_services import ServerState
    from hil.load.opcua_subscriptions import Session

log = logging.getLogger(__name__)

RECEIVE_BUFFER: Final = 65535  # largest chunk we accept
MAX_REQUEST: Final = 64 * 1024 * 1024  # largest request (all its chunks)
_HDR: Final = struct.Struct("<3scI")
_CLIENT_TYPES: Final = (b"HEL", b"OPN", b"MSG", b"CLO")
_CHUNK_TYPES: Final = (b"F", b"C", b"A")
_POLICY: Final = SecurityPolicyNone()  # type: ignore[no-untyped-call]


def _tcp(message_type: bytes, message: Any) -> bytes:
    """An ACK or ERR message, through asyncua's encoder."""
    return uatcp_to_binary(cast(Any, message_type), message)


class ProtocolError(Exception):
    """The client broke the protocol: the connection is closed with this status."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Connection(asyncio.Protocol):
    """One client connection: framing, one secure channel, the sessions created on it."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.sessions: list[Session] = []
        self._buf = b""
        self._hello = False
        self.channel_id = 0
        self.token_id = 0
        self._prev_token = 0
        self._seq = 1  # the next chunk's sequence number
        self.max_chunk = RECEIVE_BUFFER  # largest chunk the client takes
        self.max_message = 0  # 0: no limit
        self.max_chunks = 0
        self._parts: dict[int, list[bytes]] = {}
        self._parts_size = 0

    @property
    def closed(self) -> bool:
        return self.transport is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf:
            self.state.truncated += 1
            log.warning("connection closed in the middle of a frame (%d bytes)", len(self._buf))
            self._buf = b""
        self.transport = None
        self.state.connections.discard(self)
        for session in list(self.sessions):
            self.state.close_session(session)

    def close(self) -> None:
        if self.transport is not None:
            self._buf = b""
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while end - pos >= 8 and self.transport is not None:
            mtype, ctype, size = _HDR.unpack_from(buf, pos)
            try:
                if mtype not in _CLIENT_TYPES or ctype not in _CHUNK_TYPES:
                    raise ProtocolError(StatusCodes.BadTcpMessageTypeInvalid, "bad header")
                if not 12 <= size <= RECEIVE_BUFFER:
                    raise ProtocolError(StatusCodes.BadTcpMessageTooLarge, f"size {size}")
                if end - pos < size:
                    break
                chunk = buf[pos : pos + size]
                pos += size
                self._frame(mtype, ctype, chunk)
            except ProtocolError as exc:
                self._fail(exc.code, str(exc))
                return
            except Exception as exc:  # a body asyncua cannot decode
                self._fail(StatusCodes.BadDecodingError, repr(exc))
                return
        self._buf = buf[pos:] if self.transport is not None else b""

    def _fail(self, code: int, reason: str) -> None:
        self.state.malformed += 1
        log.warning("closing a connection after a malformed frame: %s", reason)
        if self.transport is not None:
            err = ua.ErrorMessage(
                Error=ua.StatusCode(ua.UInt32(code)), Reason=ua.String(reason[:200])
            )
            self.transport.write(_tcp(b"ERR", err))
        self.close()

    def _frame(self, mtype: bytes, ctype: bytes, chunk: bytes) -> None:
        buf = Buffer(chunk)
        hdr = header_from_binary(buf)
        if mtype == b"HEL":
            if self._hello:
                raise ProtocolError(StatusCodes.BadTcpMessageTypeInvalid, "second Hello")
            self._on_hello(struct_from_binary(ua.Hello, buf))
            return
        if not self._hello:
            raise ProtocolError(StatusCodes.BadTcpMessageTypeInvalid, "no Hello first")
        if mtype == b"OPN":
            sec = struct_from_binary(ua.AsymmetricAlgorithmHeader, buf)
            if sec.SecurityPolicyURI != _POLICY.URI:
                raise ProtocolError(StatusCodes.BadSecurityPolicyRejected, "policy not None")
            seqh = struct_from_binary(ua.SequenceHeader, buf)
            req = struct_from_binary(ua.OpenSecureChannelRequest, buf)
            self._on_open(req, seqh.RequestId)
            return
        if self.channel_id == 0 or hdr.ChannelId != self.channel_id:
            raise ProtocolError(StatusCodes.BadSecureChannelIdInvalid, "unknown channel")
        token = struct_from_binary(ua.SymmetricAlgorithmHeader, buf).TokenId
        if token not in (self.token_id, self._prev_token):
            raise ProtocolError(StatusCodes.BadSecureChannelTokenUnknown, f"token {token}")
        seqh = struct_from_binary(ua.SequenceHeader, buf)
        body = buf.read(len(buf))
        if ctype == b"A":
            self._parts_size -= sum(map(len, self._parts.pop(seqh.RequestId, [])))
            return
        parts = self._parts.setdefault(seqh.RequestId, [])
        parts.append(body)
        self._parts_size += len(body)
        if self._parts_size > MAX_REQUEST:
            raise ProtocolError(StatusCodes.BadRequestTooLarge, "request too large")
        if ctype == b"C":
            return
        del self._parts[seqh.RequestId]
        self._parts_size -= sum(map(len, parts))
        if mtype == b"CLO":
            self.close()
            return
        self.state.service(self, seqh.RequestId, parts[0] if len(parts) == 1 else b"".join(parts))

    def _on_hello(self, hello: ua.Hello) -> None:
        self._hello = True
        self.max_chunk = min(RECEIVE_BUFFER, hello.ReceiveBufferSize or RECEIVE_BUFFER)
        if self.max_chunk < 8192:
            raise ProtocolError(StatusCodes.BadTcpInternalError, "receive buffer < 8192")
        self.max_message = hello.MaxMessageSize
        self.max_chunks = hello.MaxChunkCount
        ack = ua.Acknowledge(
            ProtocolVersion=ua.UInt32(0),
            ReceiveBufferSize=ua.UInt32(RECEIVE_BUFFER),
            SendBufferSize=ua.UInt32(self.max_chunk),
            MaxMessageSize=ua.UInt32(MAX_REQUEST),
            MaxChunkCount=ua.UInt32(0),
        )
        self._write(_tcp(b"ACK", ack))

    def _on_open(self, req: ua.OpenSecureChannelRequest, request_id: int) -> None:
        params = req.Parameters
        if params.RequestType == ua.SecurityTokenRequestType.Issue:
            if self.channel_id:
                raise ProtocolError(StatusCodes.BadTcpMessageTypeInvalid, "second Issue")
            self.channel_id = self.state.new_id()
        elif not self.channel_id:
            raise ProtocolError(StatusCodes.BadSecureChannelIdInvalid, "renew before issue")
        self._prev_token, self.token_id = self.token_id, self.token_id + 1
        rsp = ua.OpenSecureChannelResponse()
        rsp.ResponseHeader.RequestHandle = req.RequestHeader.RequestHandle
        rsp.ResponseHeader.Timestamp = datetime.now(UTC)
        rsp.Parameters = ua.OpenSecureChannelResult(
            ServerProtocolVersion=0,
            SecurityToken=ua.ChannelSecurityToken(
                ChannelId=self.channel_id,
                TokenId=self.token_id,
                CreatedAt=datetime.now(UTC),
                RevisedLifetime=params.RequestedLifetime or 3_600_000,
            ),
            ServerNonce=b"",
        )
        self.send(struct_to_binary(rsp), request_id, b"OPN")

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def send(
        self,
        body: bytes,
        request_id: int,
        message_type: bytes = b"MSG",
    ) -> None:
        """Send a response body (with its type id) in chunks, through asyncua's encoder; one
        larger than the client's Hello allows becomes a ServiceFault BadResponseTooLarge."""
        chunk_count = -(-len(body) // (self.max_chunk - CHUNK_OVERHEAD))
        if (self.max_message and len(body) > self.max_message) or (
            self.max_chunks and chunk_count > self.max_chunks
        ):
            handle = struct.unpack_from("<I", body, 12)[0]  # after the type id and Timestamp
            log.warning("response of %d bytes over the client's limits", len(body))
            body = fault(handle, StatusCodes.BadResponseTooLarge)
        chunks: list[Any] = MessageChunk.message_to_chunks(
            _POLICY,
            body,
            self.max_chunk,
            message_type=cast(Any, message_type),
            channel_id=self.channel_id,
            request_id=request_id,
            token_id=self.token_id,
        )
        for c in chunks:
            seqh: Any = c.SequenceHeader
            seqh.SequenceNumber = self._seq
            self._seq = self._seq % 0xFFFFFFFF + 1
        self._write(b"".join(c.to_binary() for c in chunks))

    def send_hot(self, body: bytes, request_id: int) -> None:
        """Send a data-change response body, framed by `opcua_publish.frame`."""
        data, n = frame(
            body,
            channel=self.channel_id,
            token=self.token_id,
            request_id=request_id,
            seq=self._seq,
            max_chunk=self.max_chunk,
        )
        self._seq = (self._seq + n - 1) % 0xFFFFFFFF + 1
        self._write(data)

    def max_items(self) -> int:
        """Most notifications one PublishResponse may carry within the client's limits."""
        limit = 1 << 62
        if self.max_message > 0:
            limit = self.max_message
        if self.max_chunks > 0:
            limit = min(limit, self.max_chunks * (self.max_chunk - CHUNK_OVERHEAD))
        return max(1, (limit - MESSAGE_OVERHEAD - 8 * RETAINED) // ITEM_SIZE)
