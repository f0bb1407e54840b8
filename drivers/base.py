"""The driver contract: what every protocol client produces and which errors it may raise.

A driver owns one link to one PLC (one OPC UA session, one Modbus TCP connection). It does
not reconnect by itself: the acquisition loop in `edge_agent.acquire` is the single owner of
reconnects, so two loops never race.

Exceptions (the only ones that may leave a driver; library exceptions never do):

    DriverError            base class
    +-- ConnectError       the link is down or could not be made; call `aclose`, back off, retry
    +-- ConfigError        the driver's own settings are unusable (raised before any I/O)

A tag that cannot be read (does not exist, wrong type, NaN, malformed frame) is not an
exception: it is a `Sample` with `Quality.BAD` and a short `reason`.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Protocol, runtime_checkable


class Quality(IntEnum):
    """OPC UA style quality, reduced to the three classes every consumer understands."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class Sample(NamedTuple):
    """One value of one tag as it came off the wire.

    `source_ts` is the PLC's own timestamp when the protocol has one (OPC UA SourceTimestamp),
    else the time the response arrived; `recv_ts` is always when the agent received it. Both are
    Unix seconds (float). `reason` is empty for GOOD samples and a short lowercase word for
    others ("comm", "nan", "decode", "exception", "not_found", "type", ...). `text` carries the
    value of a text tag (a Modbus string); its `value` is then NaN. `server_ts` is the server's
    own timestamp when the protocol has one (OPC UA ServerTimestamp), else NaN; it is last and
    has a default so positional construction of the first fields stays valid.

    A named tuple (immutable, built in C) rather than a dataclass: a driver makes one per tag
    per poll, and this costs a third of a frozen dataclass' construction.
    """

    tag: str
    value: float
    quality: Quality
    source_ts: float
    recv_ts: float
    reason: str = ""
    text: str | None = None
    server_ts: float = math.nan


def checked_sample(
    tag: str, value: object, source_ts: float | None = None, recv_ts: float | None = None
) -> Sample:
    """Build a sample from a raw decoded value, turning NaN, infinities and non-numbers into BAD."""
    now = time.time() if recv_ts is None else recv_ts
    src = now if source_ts is None else source_ts
    if isinstance(value, bool):
        return Sample(tag, float(value), Quality.GOOD, src, now)
    if not isinstance(value, int | float):
        return Sample(tag, math.nan, Quality.BAD, src, now, "type")
    f = float(value)
    if not math.isfinite(f):
        return Sample(tag, math.nan, Quality.BAD, src, now, "nan")
    return Sample(tag, f, Quality.GOOD, src, now)


def bad_samples(tags: Sequence[str], reason: str, ts: float | None = None) -> list[Sample]:
    """All `tags` as BAD samples with one reason, e.g. when a link is lost."""
    now = time.time() if ts is None else ts
    return [Sample(t, math.nan, Quality.BAD, now, now, reason) for t in tags]


class DriverError(Exception):
    """Base class of every error a driver raises."""


class ConnectError(DriverError):
    """The link to the PLC is down or could not be established."""


class ConfigError(DriverError):
    """The driver's settings cannot work; raised before any I/O."""


class WriteRefusedError(DriverError):
    """A write that is not allowed or cannot be encoded; nothing was sent."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did. `outcome`:

    written     sent, acknowledged, read back equal
    mismatch    sent and acknowledged, but the read-back differs (the PLC changed or clamped it)
    rejected    the device answered with an exception (`reason` has its code); nothing written
    unknown     sent, but no valid answer (timeout, link lost, malformed reply): it may or may
                not have taken effect; never retried
    unverified  acknowledged, but the read-back failed
    not_sent    the old value could not be read or the link was down; nothing was sent

    `old` is the value before the write, `new` the value read back (None when unknown).
    """

    tag: str
    outcome: str
    requested: float | str
    old: float | str | None
    new: float | str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "written"


@runtime_checkable
class Driver(Protocol):
    """One link to one PLC.

    Call order: `connect` once, then `read` (or `subscribe`) any number of times, then `aclose`.
    After a `ConnectError` the caller calls `aclose` and may call `connect` again later.
    Every network await inside has a timeout; `CancelledError` is never swallowed.
    """

    name: str

    @property
    def tags(self) -> Sequence[str]:
        """Names of the tags this driver delivers, in a stable order."""
        ...

    async def connect(self) -> None:
        """Open the link. Raises `ConnectError` when the PLC is unreachable."""
        ...

    async def read(self) -> list[Sample]:
        """Read every tag once. Raises `ConnectError` when the link is lost."""
        ...

    async def aclose(self) -> None:
        """Close the link. Idempotent; never raises."""
        ...


@runtime_checkable
class Subscribable(Protocol):
    """A driver whose PLC pushes changes (OPC UA monitored items)."""

    def subscribe(self) -> AsyncIterator[list[Sample]]:
        """Yield batches of changed samples until the link is lost (then raise `ConnectError`)."""
        ...


@runtime_checkable
class Writable(Protocol):
    """A driver that can write a tag declared `writable`; nothing else is ever written."""

    name: str

    async def write(self, name: str, value: float | str) -> WriteResult:
        """Write `value` to tag `name` once, read it back and compare; never retried.
        Raises `WriteRefusedError` (nothing sent) for a read-only tag or a value its type
        cannot hold, `ConnectError` when not connected."""
        ...
