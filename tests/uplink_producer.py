"""A process that publishes a counter through the agent's uplink (buffer + publisher), for the
tests that SIGKILL it mid-stream and start it again.

    python -m tests.uplink_producer HOST PORT BUFFER_FILE RATE [--drain]

Submits one message per 1/RATE s on stream "deltas", topic `up/seq`, payload {"n": <count>}
(the envelope adds agent_id, seq, run, historical). Prints "ready" once connected. With
`--drain` it submits nothing and exits 0 once the buffer is empty.
"""

from __future__ import annotations

import asyncio
import json
import sys

import structlog

from edge_agent.buffer import Buffer, NewEntry, StreamPolicy
from edge_agent.publish import MqttPublisher, MqttSettings
from edge_agent.uplink import Uplink, UplinkSettings


async def main(host: str, port: int, path: str, rate: float, drain: bool) -> int:
    buffer = Buffer(
        path,
        max_bytes=64 * 1024 * 1024,
        max_age_s=3600.0,
        live_s=5.0,
        streams={"deltas": StreamPolicy("telemetry")},
    )
    pub = MqttPublisher(
        MqttSettings(host=host, port=port, client_id="uplink-producer", reconnect_max_s=1.0),
        status_topic="up/status",
        birth_payload=lambda: b'{"state":"online"}',
        will_payload=b'{"state":"offline"}',
    )
    uplink = Uplink(buffer, pub, agent_id="producer", settings=UplinkSettings(window=50))
    await pub.start()
    forward = asyncio.create_task(uplink.run())
    await pub.wait_connected(10.0)
    print("ready", flush=True)
    n = 0
    try:
        while True:
            if drain:
                if uplink.backlog() == 0:
                    return 0
            else:
                body = json.dumps({"n": n}).encode()
                uplink.submit([NewEntry("deltas", "up/seq", body)])
                n += 1
            await asyncio.sleep(1.0 / rate)
    finally:
        forward.cancel()
        await asyncio.gather(forward, return_exceptions=True)
        await pub.aclose(1.0)
        buffer.close()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    args = sys.argv[1:]
    drain = "--drain" in args
    args = [a for a in args if a != "--drain"]
    sys.exit(asyncio.run(main(args[0], int(args[1]), args[2], float(args[3]), drain)))
