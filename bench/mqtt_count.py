"""A lean MQTT subscriber that counts what arrives, for the load benchmarks (own process).

    python -m bench.mqtt_count HOST PORT FILTER [FILTER ...]

paho's per-message cost (~10-20 us) would make the subscriber the bottleneck at 100,000
messages/s, so this speaks MQTT 3.1.1 on a raw socket: CONNECT, SUBSCRIBE at QoS 1 (so the
broker neither drops nor queues without bound: mosquitto is started with raised queue limits),
then reads large chunks, splits them into packets, and answers every QoS 1 PUBLISH with a
PUBACK, batched per chunk. The receive time of a message is the time its chunk was read.

Per PUBLISH it counts values, messages and bytes (whole packets) by kind: `tags` (topic
contains `/tags/`: one value; or ends with `/deltas`: a batch `{"deltas": [...]}`, one value
per delta), `alarms` (ends with `/alarms`), `other`. For a stamp (a topic ending in `_stamp`
with an agent delta `{"value": ...}` or a bare number, or a delta whose tag ends in `_stamp`)
it records the delay from the change the stamp marks to the receive time
(`hil.load.layout.stamp_delay_s`).

Commands on stdin, answered with one JSON line on stdout: `mark` (the counters, cumulative,
and the Unix time), `delays` (the delays recorded since the last `delays`, then cleared),
`quit`. The first line printed is `{"subscribed": true}` once the SUBACK arrived.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Sequence

from hil.load.layout import stamp_delay_s

_CHUNK = 1 << 18
KEEPALIVE_S = 60


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", KEEPALIVE_S) + _string(client_id)
    return bytes([0x10]) + _remaining_length(len(body)) + body


def subscribe_packet(filters: Sequence[str], packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + b"\x01" for f in filters)
    return bytes([0x82]) + _remaining_length(len(body)) + body


def stamp_value(payload: bytes) -> float | None:
    """The stamp a payload carries: `{"value": x, ...}` or a bare number; None if neither."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if isinstance(doc, dict):
        doc = doc.get("value")
    return float(doc) if isinstance(doc, int | float) else None


class Counter:
    """Counters shared between the socket loop and the command thread."""

    def __init__(self) -> None:
        self.counts = {"tags": 0, "alarms": 0, "other": 0}
        self.bytes = {"tags": 0, "alarms": 0, "other": 0}
        self.messages = {"tags": 0, "alarms": 0, "other": 0}
        self.delays: list[float] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.stop = threading.Event()

    def run(self, host: str, port: int, filters: Sequence[str]) -> None:
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.sendall(connect_packet(f"bench-count-{time.time_ns() % 10**9}"))
        sock.sendall(subscribe_packet(filters))
        sock.settimeout(1.0)
        buf = b""
        last_ping = time.monotonic()
        while not self.stop.is_set():
            try:
                chunk = sock.recv(_CHUNK)
            except TimeoutError:
                chunk = None
            now = time.time()
            if chunk == b"":
                raise ConnectionError("broker closed the connection")
            if time.monotonic() - last_ping > KEEPALIVE_S / 2:
                sock.sendall(b"\xc0\x00")  # PINGREQ
                last_ping = time.monotonic()
            if not chunk:
                continue
            buf = self._packets(buf + chunk, now, sock)
        sock.close()

    def _packets(self, buf: bytes, now: float, sock: socket.socket) -> bytes:
        """Handle every complete packet in `buf`; returns the incomplete rest."""
        acks = bytearray()
        pos, end = 0, len(buf)
        counts, nbytes, delays = self.counts, self.bytes, self.delays
        messages = self.messages
        while pos + 2 <= end:
            head = buf[pos]
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= end:
                    return buf[pos:]
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            stop = i + length
            if stop > end:
                break
            kind = head >> 4
            if kind == 3:
                tlen = (buf[i] << 8) | buf[i + 1]
                topic = buf[i + 2 : i + 2 + tlen]
                body = i + 2 + tlen
                if head & 0x06:
                    acks += b"\x40\x02" + buf[body : body + 2]
                    body += 2
                n = 1
                if topic.endswith(b"/deltas"):
                    key = "tags"
                    n = self._batch(buf[body:stop], now)
                elif b"/tags/" in topic:
                    key = "tags"
                elif topic.endswith(b"/alarms"):
                    key = "alarms"
                else:
                    key = "other"
                counts[key] += n
                messages[key] += 1
                nbytes[key] += stop - pos
                if topic.endswith(b"_stamp"):
                    value = stamp_value(buf[body:stop])
                    if value is not None:
                        delays.append(stamp_delay_s(value, now))
            elif kind == 9:
                self.subscribed.set()
            pos = stop
        if acks:
            sock.sendall(acks)
        return buf[pos:]

    def _batch(self, payload: bytes, now: float) -> int:
        """Values in a batch of deltas (`{"deltas": [{"tag", "value", ...}, ...]}`)."""
        try:
            if payload[:1] == b"\x78":  # uplink.compression = "zlib"
                payload = zlib.decompress(payload)
            deltas = json.loads(payload).get("deltas", [])
        except (ValueError, AttributeError, zlib.error):
            return 0
        for d in deltas:
            if str(d.get("tag", "")).endswith("_stamp") and isinstance(d.get("value"), int | float):
                self.delays.append(stamp_delay_s(d["value"], now))
        return len(deltas)

    def answer(self, command: str) -> dict[str, object] | None:
        command = command.strip()
        if command == "mark":
            return {
                "t": time.time(),
                "counts": dict(self.counts),
                "bytes": dict(self.bytes),
                "messages": dict(self.messages),
            }
        if command == "delays":
            with self.lock:
                out, self.delays = self.delays, []
            return {"delays": [round(d, 4) for d in out]}
        if command == "quit":
            self.stop.set()
            return None
        return {"error": f"unknown command {command!r}"}


def _commands(counter: Counter) -> None:
    for line in sys.stdin:
        reply = counter.answer(line)
        if reply is None:
            break
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    counter.stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, filters = args[0], int(args[1]), args[2:]
    counter = Counter()
    net = threading.Thread(target=counter.run, args=(host, port, filters), daemon=True)
    net.start()
    if not counter.subscribed.wait(10.0):
        print("error: no SUBACK from the broker", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps({"subscribed": True}) + "\n")
    sys.stdout.flush()
    _commands(counter)
    net.join(timeout=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
