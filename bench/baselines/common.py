"""What both bare baselines share: the value counter and the `mark` command on stdin.

A baseline runs in its own process; the benchmark writes `mark` on its stdin and reads one
JSON line `{"values": n, "t": unix}` back (`n` cumulative). End of input stops it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time


class Count:
    """Values received so far, and a stop event set when stdin closes."""

    def __init__(self) -> None:
        self.values = 0
        self.stop = asyncio.Event()

    def answer(self) -> None:
        sys.stdout.write(json.dumps({"values": self.values, "t": time.time()}) + "\n")
        sys.stdout.flush()

    def serve_stdin(self) -> None:
        """Answer `mark` lines from a thread (on the loop); set `stop` at end of input."""
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in sys.stdin:
                if line.strip() == "mark":
                    loop.call_soon_threadsafe(self.answer)
            loop.call_soon_threadsafe(self.stop.set)

        threading.Thread(target=read, daemon=True).start()


class StampPublisher:
    """Publishes stamp values to `bare/tags/<tag>` (QoS 0, paho's own network thread).

    Only the stamps are published: enough for the end-to-end delay floor of a bare
    library + paho, without making paho the bottleneck of the value count.
    """

    def __init__(self, broker: str) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415  # only the delay runs need it
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        host, _, port = broker.rpartition(":")
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def publish(self, tag: str, stamp: float) -> None:
        self.client.publish(f"bare/tags/{tag}", str(int(stamp)), qos=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
