"""What the MQTT publisher is told and what it reports: settings, TLS, errors, session hooks.

`edge_agent.publish` owns the connection and the queue; this module owns the plain data
around it (`MqttSettings`, `SessionHooks`), how a TLS context is made from the settings, the
reconnect backoff, and the exceptions set on publish futures. `edge_agent.publish` re-exports
all of them.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class PublishError(Exception):
    """Base class: the broker did not acknowledge a message."""


class MessageDroppedError(PublishError):
    """The message was evicted from the full queue before it was acknowledged."""


class PublisherClosedError(PublishError):
    """The publisher was closed (or is closing) before the message was acknowledged."""


class MessageRefusedError(PublishError):
    """The broker answered with a failure reason code (MQTT 5 PUBACK >= 0x80): not delivered.

    `retryable` is true only for Quota exceeded (0x97), the one refusal that may pass later;
    Not authorized, Topic name invalid, Payload format invalid and the rest will not.
    """

    QUOTA_EXCEEDED = 0x97

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"broker refused the message: {reason} (0x{code:02x})")
        self.code = code
        self.reason = reason
        self.retryable = code == self.QUOTA_EXCEEDED


class ConnectionLostError(PublishError):
    """The link dropped before the PUBACK and the settings say not to resend."""


RawMessage = tuple[str, bytes, int, bool]
"""(topic, payload, qos, retain) of a message outside the tracked queue."""


@dataclass(frozen=True)
class SessionHooks:
    """Per-connection behaviour for protocols with session state (Sparkplug B)."""

    will: Callable[[], RawMessage]
    """Called before every CONNECT: the last will of that connection (replaces the status will)."""
    births: Callable[[], Sequence[RawMessage]]
    """Called after every CONNACK: published before any queued message."""
    lost: Callable[[], None]
    """Called when a connection is lost or closed."""


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect. `password` is never logged (it is excluded from repr)."""

    host: str
    port: int = 1883
    client_id: str = "edge-agent"
    keepalive_s: int = 10
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    tls_insecure: bool = False
    """Skip the broker certificate check (a warning is logged at start); never the default."""
    failover: tuple[tuple[str, int], ...] = ()
    """Further brokers tried in turn when the current one cannot be reached."""
    resend_after_reconnect: bool = True
    """False: messages not acknowledged when the link drops fail (`ConnectionLostError`) instead
    of being sent again on the next connection (for payloads bound to one session)."""
    protocol: str = "5"
    """MQTT "5" (persistent session with `session_expiry_s`) or "3.1.1" (clean session)."""
    session_expiry_s: int = 3600
    connect_timeout_s: float = 5.0
    max_queue: int = 100_000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0


def tls_context(s: MqttSettings) -> ssl.SSLContext:
    """The client TLS context: TLS 1.2 or newer, broker certificate and host name verified
    against `ca_file` (or the system store), client certificate when given."""
    ctx = ssl.create_default_context(cafile=s.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.cert_file is not None:
        ctx.load_cert_chain(s.cert_file, s.key_file, password=s.key_password)
    if s.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def backoff_delay(
    attempt: int, min_s: float, max_s: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Delay before reconnect attempt `attempt` (0-based): doubling, jittered, within [min, max]."""
    base = min(max_s, min_s * 2.0 ** min(attempt, 30))
    return min(max_s, max(min_s, rng(base / 2.0, base)))
