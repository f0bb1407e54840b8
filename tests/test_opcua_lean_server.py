"""The lean OPC UA load server against real clients: asyncua's `Client` and our `OpcUaDriver`.

Real sockets on loopback throughout; raw sockets where the test needs exact bytes on the wire
(garbage, a frame cut short). Every value a client receives is checked against the server's
formula: item i in cycle k is i + (k mod 2**20) / 1024, and the SourceTimestamp is the time of
cycle k (k * period), so the cycle is recovered from the timestamp.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.connection import MessageChunk
from asyncua.common.utils import Buffer
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import header_from_binary, struct_from_binary
from asyncua.ua.uaerrors import UaStatusCodeError

from drivers.base import Quality, Sample
from drivers.opcua import OpcUaDriver, OpcUaTag
from hil.load import opcua_publish as pub
from hil.load.opcua_server import LeanOpcUaServer

ROOT = Path(__file__).resolve().parents[1]
PERIOD_MS = 20
N_TAGS = 300
WAIT_S = 10.0  # bound for "eventually"; not a timing assertion
NS = "urn:edge-agent:bench"


def expected(item: int, source_ts: float) -> float:
    """The value the server must have sent for `item` at `source_ts` (Unix seconds)."""
    cycle = round(source_ts * 1000.0 / PERIOD_MS)
    assert math.isclose(cycle * PERIOD_MS / 1000.0, source_ts, abs_tol=1e-6), "off the grid"
    return item + (cycle % 2**20) / 1024.0


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LeanOpcUaServer]:
    async with LeanOpcUaServer(N_TAGS, period_ms=PERIOD_MS) as srv:
        yield srv


class Handler:
    def __init__(self) -> None:
        self.got: list[tuple[str, float, float, float]] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        dv = data.monitored_item.Value
        self.got.append(
            (
                node.nodeid.Identifier,
                val,
                dv.SourceTimestamp.timestamp(),
                dv.ServerTimestamp.timestamp(),
            )
        )


async def eventually(cond: Any) -> None:
    """Poll `cond` until true (a server counter or a handler list: nothing to wait on)."""
    async with asyncio.timeout(WAIT_S):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_asyncua_client_reads_and_subscribes(server: LeanOpcUaServer) -> None:
    """Read, DataType, server state; a handler subscription gets the formula's values; an
    unknown node id is a per-item error."""
    client = Client(server.endpoint, timeout=5)
    await client.connect()
    try:
        idx = await client.get_namespace_index(NS)
        assert idx == 2
        node = client.get_node("ns=2;s=v7")
        dv = await node.read_data_value()
        assert dv.Value.Value == expected(7, dv.SourceTimestamp.timestamp())
        assert await node.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        assert await client.nodes.server_state.read_value() == 0  # Running
        with pytest.raises(UaStatusCodeError):  # not one of the served variables
            await client.get_node("ns=2;s=v99999").read_value()

        handler = Handler()
        sub = await client.create_subscription(PERIOD_MS, handler)
        nodes = [client.get_node(f"ns=2;s=v{i}") for i in range(10)]
        results = await sub.subscribe_data_change([*nodes, client.get_node("ns=2;s=nope")])
        assert all(isinstance(r, int) for r in results[:10])
        assert results[10] == ua.StatusCode(ua.UInt32(StatusCodes.BadNodeIdUnknown))
        await eventually(lambda: len(handler.got) >= 50)
        for ident, val, src, srv in handler.got:
            assert val == expected(int(ident[1:]), src)
            assert srv >= src - 0.05
        cycles = {round(src * 1000 / PERIOD_MS) for _, _, src, _ in handler.got}
        assert len(cycles) >= 5  # the values change every cycle and each cycle is sent
        await sub.delete()
    finally:
        await client.disconnect()


async def test_driver_samples_are_correct(server: LeanOpcUaServer) -> None:
    """`OpcUaDriver.subscribe()` against the lean server: every sample is the formula's value
    at its source timestamp; the unknown node is a BAD not_found sample, the deadband (which
    the server does not support) a BAD filter sample."""
    tags = [OpcUaTag(f"t{i}", f"nsu={NS};s=v{i}", 0.0, queue_size=10) for i in range(N_TAGS)]
    tags.append(OpcUaTag("missing", f"nsu={NS};s=v{N_TAGS}"))
    tags.append(OpcUaTag("deadband", f"nsu={NS};s=v1", deadband=0.5))  # not supported
    driver = OpcUaDriver("lean", server.endpoint, tags, publishing_interval_ms=PERIOD_MS)
    await driver.connect()
    samples: list[Sample] = []
    try:
        agen = driver.subscribe()
        async with asyncio.timeout(WAIT_S):
            async for batch in agen:
                samples.extend(batch)
                if len(samples) >= 4 * N_TAGS:
                    break
        await agen.aclose()
    finally:
        await driver.aclose()
    bad = [s for s in samples if s.tag == "missing"]
    assert len(bad) == 1 and bad[0].quality == Quality.BAD and bad[0].reason == "not_found"
    assert driver.item_errors["not_found"] == 1
    (refused,) = [s for s in samples if s.tag == "deadband"]
    assert refused.quality == Quality.BAD and refused.reason == "filter"
    good = [s for s in samples if s.tag not in {"missing", "deadband"}]
    assert {s.tag for s in good} == {f"t{i}" for i in range(N_TAGS)}
    for s in good:
        assert s.quality == Quality.GOOD
        assert s.value == expected(int(s.tag[1:]), s.source_ts)
        assert s.server_ts >= s.source_ts - 0.05


async def test_responses_that_complete_together_reach_the_image_in_order() -> None:
    """The driver keeps several PublishRequests in flight; when its event loop is busy, their
    responses complete in the same turn. They must be handed on in sequence order: each tag's
    values (rising every cycle) never go back. The server runs in its own process, so it keeps
    answering while this loop is blocked."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    cmd = [sys.executable, "-m", "hil.load.opcua_server", "--port", str(port), "--tags", "20"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--publish-ms", str(PERIOD_MS), stdin=PIPE, stdout=PIPE, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert (await proc.stdout.readline()).strip() == b"ready"
        tags = [OpcUaTag(f"t{i}", f"nsu={NS};s=v{i}", 0.0) for i in range(20)]
        endpoint = f"opc.tcp://127.0.0.1:{port}/"
        driver = OpcUaDriver("order", endpoint, tags, publishing_interval_ms=PERIOD_MS)
        await driver.connect()
        seen: dict[str, list[float]] = {t.name: [] for t in tags}
        rounds = 0
        try:
            agen = driver.subscribe()
            async with asyncio.timeout(WAIT_S * 3):
                async for batch in agen:
                    for smp in batch:
                        seen[smp.tag].append(smp.source_ts)
                    rounds += 1
                    if rounds == 60:
                        break
                    # On purpose: a busy loop, while the server's responses pile up.
                    time.sleep(0.1)  # noqa: ASYNC251
            await agen.aclose()
        finally:
            await driver.aclose()
    finally:
        proc.stdin.close()
        async with asyncio.timeout(10):
            await proc.wait()
    for tag, stamps in seen.items():
        assert len(stamps) >= 40, tag
        assert stamps == sorted(stamps), tag


async def test_ten_thousand_items_in_chunked_responses() -> None:
    """10,000 items: a cycle is a ~300 kB response in several chunks, with every item."""
    n = 10_000
    async with LeanOpcUaServer(n, period_ms=50) as srv:
        tags = [OpcUaTag(f"t{i}", f"nsu={NS};s=v{i}", 0.0) for i in range(n)]
        driver = OpcUaDriver("big", srv.endpoint, tags, publishing_interval_ms=50)
        await driver.connect()
        try:
            agen = driver.subscribe()
            async with asyncio.timeout(WAIT_S * 3):
                async for batch in agen:  # cycles before every item existed are smaller
                    if len(batch) == n:
                        break
            await agen.aclose()
        finally:
            await driver.aclose()
    assert len(batch) == n
    cycle = round(batch[0].source_ts * 1000 / 50)
    for i, s in enumerate(batch):
        assert s.tag == f"t{i}" and s.value == i + (cycle % 2**20) / 1024.0


async def test_hello_message_size_limit_splits_each_cycle(server: LeanOpcUaServer) -> None:
    """A client that announces MaxMessageSize 8,192 in its Hello gets each cycle of 300 items
    (9 kB of notifications) in several responses that each fit; every item is delivered."""
    limit = 8192
    client = Client(server.endpoint, timeout=5)
    client.max_messagesize = limit
    sizes: list[int] = []
    await client.connect()
    try:
        (conn,) = server.state.connections
        assert conn.max_message == limit
        assert pub.MESSAGE_OVERHEAD + 8 * pub.RETAINED + conn.max_items() * pub.ITEM_SIZE <= limit
        send_hot = conn.send_hot

        def spy(body: bytes, request_id: int) -> None:
            sizes.append(len(body))
            send_hot(body, request_id)

        conn.send_hot = spy  # type: ignore[method-assign]
        handler = Handler()
        sub = await client.create_subscription(PERIOD_MS, handler)
        await sub.subscribe_data_change([client.get_node(f"ns=2;s=v{i}") for i in range(N_TAGS)])
        await eventually(lambda: len(handler.got) >= 3 * N_TAGS)
        for ident, val, src, _ in handler.got:
            assert val == expected(int(ident[1:]), src)
    finally:
        await client.disconnect()
    assert max(sizes) <= limit
    assert len(sizes) >= 6  # at least 3 cycles, 2 responses each


async def _call(client: Client, request: Any, response_type: Any) -> Any:
    data = await client.uaclient.protocol.send_request(request, timeout=5)
    return struct_from_binary(response_type, data)


async def test_publish_split_acknowledge_republish_keepalive(server: LeanOpcUaServer) -> None:
    """MaxNotificationsPerPublish splits a cycle with MoreNotifications; acknowledgements,
    available sequence numbers, Republish and keep-alives follow Part 4."""
    client = Client(server.endpoint, timeout=5)
    await client.connect()
    try:
        req = ua.CreateSubscriptionRequest()
        req.Parameters = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=PERIOD_MS * 5,
            RequestedLifetimeCount=30,
            RequestedMaxKeepAliveCount=2,
            MaxNotificationsPerPublish=4,
            PublishingEnabled=True,
        )
        sub = (await _call(client, req, ua.CreateSubscriptionResponse)).Parameters
        assert sub.RevisedPublishingInterval == PERIOD_MS * 5
        items = ua.CreateMonitoredItemsRequest()
        items.Parameters.SubscriptionId = sub.SubscriptionId
        items.Parameters.TimestampsToReturn = ua.TimestampsToReturn.Both
        for i in range(10):
            mi = ua.MonitoredItemCreateRequest()
            mi.ItemToMonitor.NodeId = ua.NodeId(ua.String(f"v{i}"), ua.Int16(2))
            mi.ItemToMonitor.AttributeId = ua.AttributeIds.Value
            mi.RequestedParameters.ClientHandle = 100 + i
            items.Parameters.ItemsToCreate.append(mi)
        created = await _call(client, items, ua.CreateMonitoredItemsResponse)
        assert [r.StatusCode.is_good() for r in created.Results] == [True] * 10

        async def publish(acks: list[int]) -> Any:
            p = ua.PublishRequest()
            p.Parameters.SubscriptionAcknowledgements = [
                ua.SubscriptionAcknowledgement(sub.SubscriptionId, ua.UInt32(a)) for a in acks
            ]
            return await client.uaclient.protocol.send_request(p, timeout=0)

        # One cycle of 10 items, at most 4 per response: 4, 4, 2 with MoreNotifications.
        rsps: list[Any] = []
        while len(rsps) < 3:  # keep-alives before the items existed are skipped
            rsp = struct_from_binary(ua.PublishResponse, await publish([]))
            if rsp.Parameters.NotificationMessage.NotificationData:
                rsps.append(rsp)
        counts = [
            len(r.Parameters.NotificationMessage.NotificationData[0].MonitoredItems) for r in rsps
        ]
        assert counts == [4, 4, 2]
        assert [r.Parameters.MoreNotifications for r in rsps] == [True, True, False]
        seqs = [r.Parameters.NotificationMessage.SequenceNumber for r in rsps]
        assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
        assert set(seqs) <= set(rsps[-1].Parameters.AvailableSequenceNumbers)
        handles = []
        for r in rsps:
            for mi in r.Parameters.NotificationMessage.NotificationData[0].MonitoredItems:
                handles.append(mi.ClientHandle)
                dv = mi.Value
                assert dv.Value.Value == expected(
                    mi.ClientHandle - 100, dv.SourceTimestamp.timestamp()
                )
        assert handles == list(range(100, 110))

        # Republish returns a retained message as it was sent.
        rep = ua.RepublishRequest()
        rep.Parameters.SubscriptionId = sub.SubscriptionId
        rep.Parameters.RetransmitSequenceNumber = seqs[1]
        again = await _call(client, rep, ua.RepublishResponse)
        assert again.NotificationMessage == rsps[1].Parameters.NotificationMessage

        # Acknowledgements are answered in the next response, an unknown one as such.
        rsp = struct_from_binary(ua.PublishResponse, await publish([*seqs, 999_999]))
        assert rsp.Parameters.Results == [ua.StatusCode(ua.UInt32(0))] * 3 + [
            ua.StatusCode(ua.UInt32(StatusCodes.BadSequenceNumberUnknown))
        ]
        assert not set(seqs) & set(rsp.Parameters.AvailableSequenceNumbers)

        # Stop publishing: then keep-alives come.
        mode = ua.SetPublishingModeRequest()
        mode.Parameters.PublishingEnabled = False
        mode.Parameters.SubscriptionIds = [sub.SubscriptionId]
        await _call(client, mode, ua.SetPublishingModeResponse)
        while rsp.Parameters.NotificationMessage.NotificationData:  # cycles already encoded
            rsp = struct_from_binary(ua.PublishResponse, await publish([]))
        nxt = rsp.Parameters.NotificationMessage.SequenceNumber
        assert nxt not in rsp.Parameters.AvailableSequenceNumbers  # a keep-alive uses none
        rep.Parameters.RetransmitSequenceNumber = 424_242
        with pytest.raises(UaStatusCodeError):
            await _call(client, rep, ua.RepublishResponse)
    finally:
        await client.disconnect()


async def test_renew_unsupported_and_reconnect(server: LeanOpcUaServer) -> None:
    """Discovery answers, a renewed channel keeps working, an unsupported service is a
    ServiceFault, and a client that reconnects gets a fresh session while the old one is gone."""
    client = Client(server.endpoint, timeout=5)
    (endpoint,) = await client.connect_and_get_server_endpoints()
    assert endpoint.EndpointUrl == server.endpoint
    assert endpoint.SecurityPolicyUri.endswith("#None")
    assert endpoint.UserIdentityTokens[0].TokenType == ua.UserTokenType.Anonymous
    (app,) = await client.connect_and_find_servers()
    assert app.DiscoveryUrls == [server.endpoint]
    assert not server.sessions
    await client.connect()
    first = set(server.sessions)
    assert len(first) == 1
    await client.open_secure_channel(renew=True)
    assert await client.get_node("ns=2;s=v1").read_value() >= 1.0
    with pytest.raises(UaStatusCodeError) as err:
        await client.nodes.objects.get_children()  # Browse
    assert err.value.code == StatusCodes.BadServiceUnsupported
    await client.disconnect()
    await eventually(lambda: not server.sessions)

    driver = OpcUaDriver("re", server.endpoint, [OpcUaTag("a", f"nsu={NS};s=v3")])
    await driver.connect()
    second = set(server.sessions)
    await driver.connect()  # a reconnect: the old session is closed, a new one made
    third = set(server.sessions)
    try:
        assert len(second) == 1 and len(third) == 1
        assert not second & first and not third & second
        (sample,) = await driver.read()
        assert sample.quality == Quality.GOOD and sample.value == expected(3, sample.source_ts)
    finally:
        await driver.aclose()


async def _raw(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if half_close:
        writer.close()
        return b""
    async with asyncio.timeout(WAIT_S):
        got = await reader.read()  # until the server closes
    writer.close()
    return got


async def test_garbage_and_truncated_frames_close_only_their_connection(
    server: LeanOpcUaServer,
) -> None:
    """Garbage gets an ERR and a close; a frame cut short is counted; a client that connected
    before and one that connects after are served."""
    before = Client(server.endpoint, timeout=5)
    await before.connect()
    try:
        got = await _raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got[:4] == b"ERRF" and server.malformed == 1
        # A Hello, then an MSG chunk on a channel never opened.
        hello = (
            b"HELF"
            + struct.pack("<I", 32)
            + struct.pack("<5I", 0, 65535, 65535, 0, 0)
            + struct.pack("<i", -1)
        )
        junk = b"MSGF" + struct.pack("<II", 40, 7) + bytes(28)
        got = await _raw(server.port, hello + junk)
        assert got[:4] == b"ACKF" and b"ERRF" in got and server.malformed == 2
        # A Hello whose body is cut short: a decoding error.
        got = await _raw(server.port, b"HELF" + struct.pack("<I", 16) + bytes(8))
        assert b"ERRF" in got and server.malformed == 3
        # Half a frame, then the client goes away.
        await _raw(server.port, hello[:20], half_close=True)
        await eventually(lambda: server.truncated == 1)

        assert await before.get_node("ns=2;s=v2").read_value() >= 2.0
        after = Client(server.endpoint, timeout=5)
        await after.connect()
        assert await after.get_node("ns=2;s=v5").read_value() >= 5.0
        await after.disconnect()
    finally:
        await before.disconnect()


def test_hot_path_bytes_are_what_asyncua_decodes() -> None:
    """The patched template, the PublishResponse around it and the chunks decode with asyncua
    to exactly the intended values, handles, timestamps and sequence numbers."""
    sub = pub.Subscription(9, 1, 3, 9, 0)
    sub.add_items([11, 12, 13, 14, 15], [4, 0, 299, 7, 7])
    assert sub.remove_items([2, 42]) == [True, False]  # handle 12 / node 0 goes
    ticks = pub.now_ticks(1_800_000_000.25)
    cycle = 90_000_000_012
    assert sub.cycle(cycle, PERIOD_MS, ticks, 3) == 4
    assert [n for _, _, n in sub.ready] == [3, 1]
    seq, msg, _ = sub.ready[0]
    body = pub.publish_response(
        77,
        ticks=ticks,
        sub_id=9,
        available=[seq, seq + 1],
        more=True,
        message=msg,
        ack_results=[0, 5],
    )
    wire, n_chunks = pub.frame(body, channel=3, token=4, request_id=5, seq=10, max_chunk=64)
    assert n_chunks == math.ceil(len(body) / 40)
    buf = Buffer(wire)
    parts = []
    while len(buf):
        chunk = MessageChunk.from_binary(SecurityPolicyNone(), buf)
        assert chunk.MessageHeader.ChannelId == 3 and chunk.SecurityHeader.TokenId == 4
        assert chunk.SequenceHeader.RequestId == 5
        parts.append(
            (chunk.SequenceHeader.SequenceNumber, chunk.MessageHeader.ChunkType, chunk.Body)
        )
    assert [p[0] for p in parts] == list(range(10, 10 + n_chunks))
    assert [p[1] for p in parts] == [b"C"] * (n_chunks - 1) + [b"F"]
    rsp = struct_from_binary(ua.PublishResponse, Buffer(b"".join(p[2] for p in parts)))
    assert rsp.ResponseHeader.RequestHandle == 77
    p = rsp.Parameters
    assert (p.SubscriptionId, p.AvailableSequenceNumbers, p.MoreNotifications) == (
        9,
        [seq, seq + 1],
        True,
    )
    assert p.Results == [ua.StatusCode(ua.UInt32(0)), ua.StatusCode(ua.UInt32(5))]
    assert p.NotificationMessage.SequenceNumber == seq
    (dcn,) = p.NotificationMessage.NotificationData
    got = [
        (m.ClientHandle, m.Value.Value.Value, m.Value.Value.VariantType) for m in dcn.MonitoredItems
    ]
    src = (cycle * PERIOD_MS) / 1000.0
    assert got == [
        (11, 4 + (cycle % 2**20) / 1024, ua.VariantType.Double),
        (13, 299 + (cycle % 2**20) / 1024, ua.VariantType.Double),
        (14, 7 + (cycle % 2**20) / 1024, ua.VariantType.Double),
    ]
    for m in dcn.MonitoredItems:
        assert m.Value.SourceTimestamp.timestamp() == pytest.approx(src, abs=1e-6)
        assert m.Value.ServerTimestamp.timestamp() == pytest.approx(1_800_000_000.25, abs=1e-6)
    assert header_from_binary(Buffer(wire)).ChannelId == 3


def test_command_line_prints_ready_and_stops_when_stdin_closes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.load.opcua_server", "--port", str(port), "--tags", "5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"

        async def read() -> float:
            client = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5)
            await client.connect()
            try:
                return float(await client.get_node("ns=2;s=v4").read_value())
            finally:
                await client.disconnect()

        assert asyncio.run(read()) >= 4.0
        proc.stdin.close()
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
