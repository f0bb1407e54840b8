"""One Modbus connection: requests out, responses matched back, every bad frame counted.

This module owns a TCP connection to one Modbus server (or gateway) and the exchange of
request and response PDUs over it: transaction ids, up to `max_outstanding` requests in flight
(always 1 with RTU framing, which has no transaction id), a timeout per request, and the
counters of everything that went wrong (`errors`, keyed by reason). It does not retry,
reconnect, plan or decode: the driver decides what a failure means for its tags.

It is a small asyncio protocol rather than pymodbus' client because the driver needs what that
client does not give: responses that do not belong to a pending request, malformed MBAP
headers, truncated frames and CRC errors counted by reason instead of logged and dropped;
several requests in flight on one connection; and no hidden retry or reconnect.

`request_many` sends up to `max_outstanding` requests in one write (one system call instead of
one per request: a poll of 10,000 tags is 80 requests per connection) and waits for all of
them under one timer; each request's outcome is the one `request` would give, errors counted
the same way, except that a lost link fails the whole batch.

Errors a request raises (each counted once, under its reason, before it is raised):

    RequestTimeoutError  no response within the timeout ("timeout"); the request is abandoned
                         and a response that arrives later is counted as "late"
    FrameError           a response that does not fit ("exception", "short", "malformed",
                         "function_mismatch", "unit_mismatch", "crc")
    LinkLostError        the connection is closed or its byte stream cannot be split any more;
                         the frame that broke it is counted ("malformed", "truncated")

With RTU framing there is no transaction id: a response that arrives after its request timed
out is taken as the answer to the next request if unit, function and length fit. Serial
masters share this limit; keep `timeout_s` above the gateway's own serial timeout.
"""

from __future__ import annotations

import asyncio
import collections
from collections import Counter

from drivers.modbus.wire import FrameError, check_response, framer


class LinkLostError(Exception):
    """The connection is gone (closed by the peer, reset, or broken by a malformed stream)."""


class RequestTimeoutError(Exception):
    """No response in time; whether a write took effect is unknown."""


class RequestNotSentError(LinkLostError):
    """The link was down before the request could be sent: it certainly had no effect."""


class _ExpiredError(Exception):
    """Internal: the request's timer fired first."""


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(_ExpiredError())


def _expire_all(futs: list[asyncio.Future[bytes]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(_ExpiredError())


Outcome = bytes | FrameError | RequestTimeoutError
"""One request's result in a batch: the checked data, or the (counted) error."""


class Link(asyncio.Protocol):
    """A Modbus client connection (`framing` "tcp" or "rtu") counting errors into `errors`."""

    def __init__(self, framing: str, max_outstanding: int, errors: Counter[str]) -> None:
        self._framer = framer(framing)
        self.framing = framing
        self.max_outstanding = 1 if framing == "rtu" else max(1, max_outstanding)
        self.errors = errors
        self._transport: asyncio.Transport | None = None
        self._slots = asyncio.Semaphore(self.max_outstanding)
        self._batch = asyncio.Lock()  # one batch takes its slots at a time (no deadlock)
        self._pending: dict[int, tuple[asyncio.Future[bytes], int]] = {}
        self._abandoned: collections.deque[int] = collections.deque(maxlen=256)
        self._tid = 0
        self._closed_reason = "not connected"

    async def open(self, host: str, port: int, timeout_s: float) -> None:
        """Connect; OSError or TimeoutError when the server cannot be reached."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: self, host, port)

    @property
    def up(self) -> bool:
        """True while the connection is open."""
        return self._transport is not None

    def close(self) -> None:
        """Close the connection; pending requests fail with LinkLostError. Idempotent."""
        transport = self._transport
        if transport is not None:
            self._closed_reason = "closed"
            transport.abort()  # calls connection_lost soon, which fails what is pending
            self._transport = None
        self._fail_pending("closed")

    # asyncio.Protocol callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._framer.pending_bytes:
            self.errors["truncated"] += 1
        self._transport = None
        self._closed_reason = "connection lost"
        self._fail_pending("connection lost")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._framer.feed(data)
        except FrameError as exc:
            self.errors[exc.reason] += 1
            if self._framer.has_tid:
                # A TCP stream whose header makes no sense cannot be re-synchronised: drop it.
                self._closed_reason = f"{exc.reason} frame"
                transport, self._transport = self._transport, None
                if transport is not None:
                    transport.abort()
                self._fail_pending(f"{exc.reason} frame")
            else:
                # RTU: the request in flight failed; the next request starts a clean buffer.
                for fut, _unit in self._pending.values():
                    if not fut.done():
                        fut.set_exception(FrameError(exc.reason, "counted"))
                self._pending.clear()
            return
        pending = self._pending
        for tid, unit, pdu in frames:
            if self._framer.has_tid:
                entry = pending.pop(tid, None)
            else:
                entry = pending.pop(next(iter(pending)), None) if pending else None
            if entry is None:
                if not self._framer.has_tid:
                    self.errors["unsolicited"] += 1
                else:
                    self.errors["late" if tid in self._abandoned else "tid_mismatch"] += 1
                continue
            fut, want_unit = entry
            if fut.done():
                continue
            if unit != want_unit:
                self.errors["unit_mismatch"] += 1
                fut.set_exception(FrameError("unit_mismatch", "counted"))
            else:
                fut.set_result(pdu)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut, _unit in pending.values():
            if not fut.done():
                fut.set_exception(LinkLostError(why))

    # requests ---------------------------------------------------------------------------

    async def request(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send `pdu` to `unit`; the checked data part of the response (see module doc)."""
        async with self._slots:
            transport = self._transport
            if transport is None:
                raise RequestNotSentError(self._closed_reason)
            self._tid = tid = (self._tid % 0xFFFF) + 1
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            key = tid if self._framer.has_tid else 0
            self._pending[key] = (fut, unit)
            transport.write(self._framer.encode(tid, unit, pdu))
            # A timer that fails the future is lighter than asyncio.timeout() per request.
            timer = fut.get_loop().call_later(timeout_s, _expire, fut)
            try:
                rsp = await fut
            except _ExpiredError:
                self.errors["timeout"] += 1
                self._abandoned.append(tid)
                raise RequestTimeoutError(f"unit {unit}: no response in {timeout_s:g} s") from None
            except asyncio.CancelledError:
                self._abandoned.append(tid)  # its answer may still come: "late", not foreign
                raise
            finally:
                timer.cancel()
                if self._pending.get(key, (None,))[0] is fut:
                    del self._pending[key]
        try:
            return check_response(rsp, pdu)
        except FrameError as exc:
            self.errors[exc.reason] += 1
            raise

    async def request_many(self, batch: list[tuple[int, bytes]], timeout_s: float) -> list[Outcome]:
        """Send every `(unit, pdu)` of `batch` (at most `max_outstanding`, TCP framing) at once;
        per request the checked data, `FrameError` or `RequestTimeoutError` (each counted, as
        `request` counts it). Raises LinkLostError (RequestNotSentError: nothing was sent)."""
        if len(batch) > self.max_outstanding or not self._framer.has_tid:
            raise ValueError(f"a batch of {len(batch)} exceeds max_outstanding or needs TCP")
        async with self._batch:
            taken = 0
            try:
                for _ in batch:
                    await self._slots.acquire()
                    taken += 1
                return await self._send_batch(batch, timeout_s)
            finally:
                for _ in range(taken):
                    self._slots.release()

    async def _send_batch(self, batch: list[tuple[int, bytes]], timeout_s: float) -> list[Outcome]:
        transport = self._transport
        if transport is None:
            raise RequestNotSentError(self._closed_reason)
        loop = asyncio.get_running_loop()
        pending, encode = self._pending, self._framer.encode
        futs: list[asyncio.Future[bytes]] = []
        tids: list[int] = []
        frames: list[bytes] = []
        for unit, pdu in batch:
            self._tid = tid = (self._tid % 0xFFFF) + 1
            fut: asyncio.Future[bytes] = loop.create_future()
            pending[tid] = (fut, unit)
            futs.append(fut)
            tids.append(tid)
            frames.append(encode(tid, unit, pdu))
        transport.write(b"".join(frames))
        timer = loop.call_later(timeout_s, _expire_all, futs)
        try:
            await asyncio.wait(futs)
        except asyncio.CancelledError:
            self._abandoned.extend(t for t, f in zip(tids, futs, strict=True) if not f.done())
            raise
        finally:
            timer.cancel()
            for tid, fut in zip(tids, futs, strict=True):
                if pending.get(tid, (None,))[0] is fut:
                    del pending[tid]
        out: list[Outcome] = []
        lost: BaseException | None = None
        for (unit, pdu), tid, fut in zip(batch, tids, futs, strict=True):
            exc = fut.exception()  # every future is done here: each exception is retrieved
            if exc is None:
                try:
                    out.append(check_response(fut.result(), pdu))
                except FrameError as err:
                    self.errors[err.reason] += 1
                    out.append(err)
            elif isinstance(exc, _ExpiredError):
                self.errors["timeout"] += 1
                self._abandoned.append(tid)
                out.append(RequestTimeoutError(f"unit {unit}: no response in {timeout_s:g} s"))
            elif isinstance(exc, FrameError):  # counted where it was found
                out.append(exc)
            else:
                lost = exc
        if lost is not None:
            raise lost
        return out
