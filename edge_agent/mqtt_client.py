"""paho-mqtt's client with buffered socket reads and prepacked publish properties.

paho reads every incoming packet with two or three `recv` calls (the command byte, each byte of
the remaining length, then the body), and one more that finds the socket empty: a QoS 1
publisher that receives a PUBACK per message pays three or four system calls per message just
to read 4-byte acknowledgements. `BufferedClient` reads the socket in chunks of up to 64 kB and
hands paho its bytes from memory, so a burst of PUBACKs costs one `recv`. Everything else is
paho's own code. Whoever drives the client from an event loop must call `loop_read` again while
`buffered()` is non-zero: the bytes are already out of the socket, so the socket will not
signal readable for them.

paho also builds a `ReasonCode` and a `Properties` object for every PUBACK it decodes (about
18 us, more than the rest of the acknowledgement path): the common PUBACK, two bytes of packet
id meaning success without properties (MQTT 5 allows omitting both), is decoded here and hands
the callback one shared, empty `ReasonCode` / `Properties` pair. Any other PUBACK goes through
paho's decoder.

`publish_properties` builds the MQTT 5 properties of a PUBLISH once per content type, packed
once: paho otherwise constructs and packs a `Properties` object per message (about 20 us).
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

READ_CHUNK = 65536
_MID = struct.Struct("!H")
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class BufferedClient(mqtt.Client):
    """A paho `Client` whose socket reads go through an in-memory buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not consumed yet."""
        if self._rsock is not self._sock:
            return 0
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: bytes of the old one are void
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        pos = self._rpos
        if pos >= len(self._rbuf):
            data = super()._sock_recv(READ_CHUNK)  # raises BlockingIOError when empty
            if len(data) <= bufsize:  # also b"" at end of stream
                self._rbuf, self._rpos = b"", 0
                return data
            self._rbuf, pos = data, 0
        end = pos + bufsize
        self._rpos = end
        return self._rbuf[pos:end]

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        (mid,) = _MID.unpack(packet)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class _PackedProperties(Properties):
    """Properties whose wire form is computed once (they are never changed after)."""

    def __init__(self, content_type: str) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.ContentType = content_type
        # Properties.__setattr__ accepts property names only.
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def publish_size(topic: str, payload: bytes, properties: Properties | None, v5: bool) -> int:
    """Bytes of the QoS 1 PUBLISH packet paho will write, fixed header included (what a
    broker's Maximum Packet Size limits)."""
    rest = 2 + len(topic.encode()) + 2 + len(payload)
    if v5:
        rest += 1 if properties is None else len(properties.pack())  # type: ignore[no-untyped-call]
    header = 2
    while rest >= 128 ** (header - 1) and header < 5:
        header += 1
    return header + rest


@functools.lru_cache(maxsize=16)
def publish_properties(content_type: str) -> Properties:
    """MQTT 5 PUBLISH properties carrying `content_type`, shared by every message."""
    return _PackedProperties(content_type)
