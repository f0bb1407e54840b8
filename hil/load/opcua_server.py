"""A lean OPC UA load server: N Double variables that change every cycle, served over opc.tcp.

asyncua's server peaks near 17k value changes/s on a core, far below what a client under test
can take. This server does the one thing a load source needs, like `hil.load.modbus_server`
for Modbus: it serves `ns=2;s=v<i>` (i < `n_tags`, namespace `urn:edge-agent:bench`) whose
values follow `hil.load.opcua_publish.value(i, cycle)` on a clock of `period_ms`, and answers
exactly the services an asyncua 2.x `Client` and `drivers.opcua.OpcUaDriver` use, with
security policy None and an anonymous identity:

- Hello/Acknowledge (chunk and message limits of the client's Hello respected),
  OpenSecureChannel (issue and renew), CloseSecureChannel, GetEndpoints, FindServers;
- CreateSession, ActivateSession, CloseSession (a session lives as long as its connection);
- Read: the namespace array, server status, state, current time and ServiceLevel, and of the
  variables Value, DataType, NodeClass, BrowseName, DisplayName, ValueRank and AccessLevel;
- CreateSubscription, ModifySubscription, SetPublishingMode, DeleteSubscriptions,
  CreateMonitoredItems (per-item results: BadNodeIdUnknown for other nodes,
  BadMonitoredItemFilterUnsupported for a deadband or another filter than DataChangeFilter),
  DeleteMonitoredItems, Publish (acknowledgements, keep-alives, MoreNotifications when
  MaxNotificationsPerPublish splits a cycle) and Republish.

Any other service gets a ServiceFault BadServiceUnsupported. The publishing interval is revised
up to a multiple of `period_ms`; each publishing cycle answers one queued PublishRequest with
all the subscription's items (the values change every cycle); a cycle that comes while the
client has not yet fetched the previous one is skipped (counted). Monitored items report
every cycle: sampling interval and queue size are revised to the clock period and 1, and both
timestamps are always returned whatever TimestampsToReturn asks. Requests are decoded and
responses encoded with asyncua's `ua` types, except the data-change path
(`hil.load.opcua_publish`). A malformed or unexpected frame gets an ERR message and closes its
connection (counted in `malformed`, a frame cut short by a closing client in `truncated`); the
server keeps serving the others.

`python -m hil.load.opcua_server --port P --tags N [--publish-ms MS]` prints `ready` once
listening and runs until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, Final

from hil.load.opcua_channel import Connection
from hil.load.opcua_services import ServerState
from hil.load.opcua_subscriptions import Session

log = logging.getLogger(__name__)

NAMESPACE: Final = "urn:edge-agent:bench"


class LeanOpcUaServer:
    """Serves `n_tags` Double variables at `opc.tcp://host:port/` (port 0: a free one)."""

    def __init__(
        self,
        n_tags: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        period_ms: int = 50,
        namespace: str = NAMESPACE,
    ) -> None:
        if n_tags < 1 or period_ms < 1:
            raise ValueError("n_tags and period_ms must be >= 1")
        self.host = host
        self.port = port
        self.state = ServerState(n_tags, period_ms, namespace)
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def malformed(self) -> int:
        return self.state.malformed

    @property
    def truncated(self) -> int:
        return self.state.truncated

    @property
    def sessions(self) -> dict[tuple[int, Any], Session]:
        return self.state.sessions

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self.state), self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.state.endpoint = self.endpoint

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.state.connections):
            conn.close()
        await server.wait_closed()

    async def __aenter__(self) -> LeanOpcUaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(port: int, n_tags: int, period_ms: int) -> None:
    async with LeanOpcUaServer(n_tags, port=port, period_ms=period_ms) as server:
        print("ready", flush=True)
        # Whoever started us holds our stdin open: EOF means it is gone, and so should we be.
        await asyncio.to_thread(sys.stdin.read)
        st = server.state
        log.info(
            "lean opcua server stopping: %d notifications, %d malformed, %d truncated",
            st.notifications,
            st.malformed,
            st.truncated,
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.load.opcua_server", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tags", type=int, default=1000)
    p.add_argument("--publish-ms", type=int, default=50, help="value clock period (ms)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.tags, args.publish_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
