"""The subscription services of the lean OPC UA load server, and the session they belong to.

`SubscriptionServices` (a part of `hil.load.opcua_services.ServerState`) answers
CreateSubscription, ModifySubscription, SetPublishingMode, DeleteSubscriptions,
CreateMonitoredItems, DeleteMonitoredItems, Publish and Republish. Subscriptions run on timers
aligned to the value clock (`hil.load.opcua_publish`): each publishing cycle queues the cycle's
data changes (or, after `keepalive` empty cycles, a keep-alive) and `_dispatch` answers the
session's queued PublishRequests with them; a timer that fails is logged and keeps running.
A publishing interval is revised up to a multiple of the clock period; subscriptions end with
their session (no lifetime expiry: the connection is the lifetime).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import struct_to_binary
from asyncua.ua.uaprotocol_auto import DataChangeFilter

from hil.load import opcua_publish as pub

if TYPE_CHECKING:
    from hil.load.opcua_channel import Connection

log = logging.getLogger(__name__)

SC = StatusCodes
MAX_PUBLISH_QUEUE: Final = 20


class ServiceFaultError(Exception):
    """A service fails as a whole with this status code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class PendingPublish:
    """A PublishRequest waiting for a subscription to have something to send."""

    conn: Connection
    request_id: int
    handle: int
    results: list[int]
    deadline: float


@dataclass
class Session:
    """One session: the connection it is bound to, its subscriptions, its queued publishes."""

    id: ua.NodeId
    token: ua.NodeId
    conn: Connection
    timeout_ms: float
    activated: bool = False
    subs: dict[int, pub.Subscription] = field(default_factory=dict)
    requests: deque[PendingPublish] = field(default_factory=deque)


def sc(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def numeric_nodeid(ident: int, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(ident), ua.Int16(ns))


def _plain_filter(filt: Any) -> bool:
    """No filter, or a DataChangeFilter without a deadband (every value changes every cycle,
    so the trigger makes no difference); deadbands and other filters are not supported."""
    # (asyncua decodes into the generated class; `ua.DataChangeFilter` is a subclass of it.)
    if filt is None or (isinstance(filt, DataChangeFilter) and filt.DeadbandType == 0):
        return True
    # The null ExtensionObject: what a client that sets no filter sends.
    return isinstance(filt, ua.ExtensionObject) and filt.TypeId.Identifier == 0 and not filt.Body


def fault(handle: int, code: int) -> bytes:
    rsp = ua.ServiceFault()
    rsp.ResponseHeader.RequestHandle = handle
    rsp.ResponseHeader.Timestamp = datetime.now(UTC)
    rsp.ResponseHeader.ServiceResult = sc(code)
    return struct_to_binary(rsp)


class SubscriptionServices:
    """The subscription and publish services of `ServerState` (which provides these)."""

    period_ms: int
    notifications: int
    publish_responses: int

    def new_id(self) -> int:
        raise NotImplementedError

    def cycle_now(self) -> int:
        raise NotImplementedError

    def node_index(self, nid: ua.NodeId) -> int | None:
        raise NotImplementedError

    def _revise(self, sub: pub.Subscription, p: Any) -> None:
        """Apply Create/ModifySubscription parameters `p`, revised as Part 4 allows."""
        interval, keepalive = p.RequestedPublishingInterval, p.RequestedMaxKeepAliveCount
        sub.step = max(1, math.ceil((interval if interval > 0 else 0) / self.period_ms - 1e-9))
        sub.keepalive = max(1, min(keepalive or 10, 100_000))
        sub.lifetime = max(p.RequestedLifetimeCount, 3 * sub.keepalive)
        sub.max_notif = p.MaxNotificationsPerPublish

    def _sub(self, session: Session, sub_id: int) -> pub.Subscription:
        sub = session.subs.get(sub_id)
        if sub is None:
            raise ServiceFaultError(SC.BadSubscriptionIdInvalid)
        return sub

    def _create_sub(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        p = req.Parameters
        sub = pub.Subscription(self.new_id(), 1, 1, 3, 0)
        self._revise(sub, p)
        sub.enabled = p.PublishingEnabled
        session.subs[sub.id] = sub
        sub.next_cycle = self.cycle_now() + 1
        self._schedule(session, sub)
        rsp = ua.CreateSubscriptionResponse()
        rsp.Parameters = ua.CreateSubscriptionResult(
            SubscriptionId=sub.id,
            RevisedPublishingInterval=float(sub.step * self.period_ms),
            RevisedLifetimeCount=sub.lifetime,
            RevisedMaxKeepAliveCount=sub.keepalive,
        )
        return rsp

    def _modify_sub(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        p = req.Parameters
        sub = self._sub(session, p.SubscriptionId)
        self._revise(sub, p)
        rsp = ua.ModifySubscriptionResponse()
        rsp.Parameters = ua.ModifySubscriptionResult(
            RevisedPublishingInterval=float(sub.step * self.period_ms),
            RevisedLifetimeCount=sub.lifetime,
            RevisedMaxKeepAliveCount=sub.keepalive,
        )
        return rsp

    def _set_mode(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        results = []
        for sid in req.Parameters.SubscriptionIds:
            sub = session.subs.get(sid)
            if sub is not None:
                sub.enabled = req.Parameters.PublishingEnabled
            results.append(sc(SC.Good if sub else SC.BadSubscriptionIdInvalid))
        rsp = ua.SetPublishingModeResponse()
        rsp.Parameters.Results = results
        return rsp

    def _delete_subs(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        results = []
        for sid in req.Parameters.SubscriptionIds:
            sub = session.subs.pop(sid, None)
            if sub is not None:
                cancel(sub)
            results.append(sc(SC.Good if sub else SC.BadSubscriptionIdInvalid))
        if not session.subs:  # nothing left to answer the queued publish requests with
            while session.requests:
                p = session.requests.popleft()
                if not p.conn.closed:
                    p.conn.send(fault(p.handle, SC.BadNoSubscription), p.request_id)
        rsp = ua.DeleteSubscriptionsResponse()
        rsp.Results = results
        return rsp

    def _create_items(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        p = req.Parameters
        sub = self._sub(session, p.SubscriptionId)
        if not p.ItemsToCreate:
            raise ServiceFaultError(SC.BadNothingToDo)
        codes: list[int] = []
        handles: list[int] = []
        nodes: list[int] = []
        for item in p.ItemsToCreate:
            i = self.node_index(item.ItemToMonitor.NodeId)
            if i is None:
                codes.append(SC.BadNodeIdUnknown)
            elif item.ItemToMonitor.AttributeId != AttributeIds.Value:
                codes.append(SC.BadAttributeIdInvalid)
            elif not _plain_filter(item.RequestedParameters.Filter):
                codes.append(SC.BadMonitoredItemFilterUnsupported)
            else:
                codes.append(SC.Good)
                handles.append(item.RequestedParameters.ClientHandle)
                nodes.append(i)
        ids = iter(sub.add_items(handles, nodes))
        results = []
        for code in codes:
            ok = code == SC.Good
            results.append(
                ua.MonitoredItemCreateResult(
                    StatusCode=sc(code),
                    MonitoredItemId=next(ids) if ok else 0,
                    RevisedSamplingInterval=float(self.period_ms) if ok else 0.0,
                    RevisedQueueSize=1 if ok else 0,  # one cycle is kept, not a queue
                )
            )
        rsp = ua.CreateMonitoredItemsResponse()
        rsp.Results = results
        return rsp

    def _delete_items(self, conn: Connection, rid: int, req: Any, session: Session) -> Any:
        sub = self._sub(session, req.Parameters.SubscriptionId)
        found = sub.remove_items(list(req.Parameters.MonitoredItemIds))
        rsp = ua.DeleteMonitoredItemsResponse()
        rsp.Results = [sc(SC.Good if f else SC.BadMonitoredItemIdInvalid) for f in found]
        return rsp

    # -- Publish -------------------------------------------------------------------------------

    def _publish(self, conn: Connection, rid: int, req: Any, session: Session) -> None:
        results = []
        for ack in req.Parameters.SubscriptionAcknowledgements:
            sub = session.subs.get(ack.SubscriptionId)
            if sub is None:
                results.append(SC.BadSubscriptionIdInvalid)
            elif sub.acknowledge(ack.SequenceNumber):
                results.append(SC.Good)
            else:
                results.append(SC.BadSequenceNumberUnknown)
        if not session.subs:
            raise ServiceFaultError(SC.BadNoSubscription)
        hint = req.RequestHeader.TimeoutHint
        deadline = time.monotonic() + hint / 1000.0 if hint else math.inf
        handle = req.RequestHeader.RequestHandle
        session.requests.append(PendingPublish(conn, rid, handle, results, deadline))
        if len(session.requests) > MAX_PUBLISH_QUEUE:
            p = session.requests.popleft()
            p.conn.send(fault(p.handle, SC.BadTooManyPublishRequests), p.request_id)
        self._dispatch(session)

    def _republish(self, conn: Connection, rid: int, req: Any, session: Session) -> None:
        sub = self._sub(session, req.Parameters.SubscriptionId)
        msg = sub.retained.get(req.Parameters.RetransmitSequenceNumber)
        if msg is None:
            raise ServiceFaultError(SC.BadMessageNotAvailable)
        ticks = pub.now_ticks(time.time())
        body = pub.republish_response(req.RequestHeader.RequestHandle, ticks, msg)
        conn.send_hot(body, rid)

    def _dispatch(self, session: Session) -> None:
        """Answer queued PublishRequests with what the subscriptions have ready."""
        while session.requests:
            sub = next((s for s in session.subs.values() if s.ready or s.keepalive_due), None)
            if sub is None:
                return
            p = session.requests.popleft()
            if p.conn.closed:
                continue
            ticks = pub.now_ticks(time.time())
            if sub.ready:
                _, msg, n = sub.ready.pop(0)
                self.notifications += n
            else:
                msg = pub.keepalive_message(sub.seq, ticks)
            sub.keepalive_due = False
            sub.idle_cycles = 0
            body = pub.publish_response(
                p.handle,
                ticks=ticks,
                sub_id=sub.id,
                available=list(sub.retained),
                more=bool(sub.ready),
                message=msg,
                ack_results=p.results,
            )
            self.publish_responses += 1
            p.conn.send_hot(body, p.request_id)

    def _schedule(self, session: Session, sub: pub.Subscription) -> None:
        loop = asyncio.get_running_loop()
        delay = sub.next_cycle * self.period_ms / 1000.0 - time.time()
        sub.handle = loop.call_later(max(0.0, delay), self._tick, session, sub)

    def _tick(self, session: Session, sub: pub.Subscription) -> None:
        now = time.time()
        current = int(now * 1000.0 // self.period_ms)
        k = sub.next_cycle
        if current - k >= sub.step:  # fell behind (a busy loop): skip, do not burst
            k = current
        try:
            if sub.cycle(k, self.period_ms, pub.now_ticks(now), session.conn.max_items()) == 0:
                sub.idle_cycles += 1
                if sub.idle_cycles >= sub.keepalive and not sub.ready:
                    sub.keepalive_due = True
            mono = time.monotonic()
            while session.requests and session.requests[0].deadline < mono:
                p = session.requests.popleft()
                if not p.conn.closed:
                    p.conn.send(fault(p.handle, SC.BadTimeout), p.request_id)
            self._dispatch(session)
        except Exception:  # a bug here must not stop the subscription's clock
            log.exception("publishing cycle of subscription %d failed", sub.id)
        sub.next_cycle = k + sub.step
        if session.subs.get(sub.id) is sub:
            self._schedule(session, sub)


def cancel(sub: pub.Subscription) -> None:
    if sub.handle is not None:
        sub.handle.cancel()
        sub.handle = None
