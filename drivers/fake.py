"""A scripted driver for contract tests and agent unit tests (a fake: no wire at all).

`FakeDriver` implements `Driver` and `Subscribable` from a script instead of a PLC. The script
is a sequence of steps, consumed one per `read()` (or per batch of `subscribe()`):

    {"flow": 1.0, "level": 0.5}    values for some tags (the others keep their last value)
    LINK_DOWN                      the link drops: this read raises ConnectError, and so does
                                   `connect()` until the step is followed by LINK_UP
    LINK_UP                        the PLC is reachable again (consumed by `connect()`)

When the script runs out, the last values repeat. Tags not in `tags`' initial values are
BAD "not_found"; NaN/inf become BAD "nan" and a value that is not a number (`set_values` takes
any object, as a PLC may serve a text where a number is expected) BAD "type", exactly like the
real drivers. `down()` and `up()`
drop and restore the link from the outside, for tests that do not script it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Final

from drivers.base import ConnectError, Quality, Sample, checked_sample

LINK_DOWN: Final = "link_down"
LINK_UP: Final = "link_up"

Step = Mapping[str, float] | str


class FakeDriver:
    """Scripted values and link losses behind the `Driver` / `Subscribable` protocols."""

    def __init__(
        self,
        name: str,
        tags: Sequence[str],
        script: Iterable[Step] = (),
        *,
        initial: Mapping[str, float] | None = None,
        interval_s: float = 0.01,
    ) -> None:
        self.name = name
        self._tags = tuple(tags)
        self._values: dict[str, object] = dict(initial or dict.fromkeys(self._tags, 0.0))
        self._script: list[Step] = list(script)
        self._interval_s = interval_s
        self._connected = False
        self._reachable = True
        self._changed = asyncio.Event()
        self.reads = 0
        self.connects = 0

    @property
    def tags(self) -> Sequence[str]:
        """Tag names in configuration order."""
        return self._tags

    def down(self) -> None:
        """Drop the link now: pending and later calls raise ConnectError until `up()`."""
        self._reachable = False
        self._changed.set()

    def up(self) -> None:
        """Make the PLC reachable again; the next `connect()` succeeds."""
        self._reachable = True

    def set_values(self, values: Mapping[str, object]) -> None:
        """Change values from the outside (seen by the next read or subscription batch)."""
        self._values.update(values)
        self._changed.set()

    async def connect(self) -> None:
        """Succeeds unless the link is down (a scripted LINK_UP step brings it back)."""
        await asyncio.sleep(0)
        if self._script and self._script[0] == LINK_UP:
            self._script.pop(0)
            self._reachable = True
        if not self._reachable:
            raise ConnectError(f"fake {self.name}: unreachable")
        self.connects += 1
        self._connected = True

    def _step(self) -> None:
        if not self._connected:
            raise ConnectError(f"fake {self.name}: not connected")
        if self._script:
            step = self._script[0]
            if step == LINK_DOWN:
                self._script.pop(0)
                self._reachable = False
            elif isinstance(step, Mapping):
                self._script.pop(0)
                self._values.update(step)
        if not self._reachable:
            self._connected = False
            raise ConnectError(f"fake {self.name}: link lost")

    def _samples(self, names: Iterable[str]) -> list[Sample]:
        now = time.time()
        out = []
        for n in names:
            if n in self._values:
                out.append(checked_sample(n, self._values[n], now, now))
            else:
                out.append(Sample(n, math.nan, Quality.BAD, now, now, "not_found"))
        return out

    async def read(self) -> list[Sample]:
        """Consume one script step and return every tag."""
        await asyncio.sleep(0)
        self._step()
        self.reads += 1
        return self._samples(self._tags)

    async def subscribe(self) -> AsyncIterator[list[Sample]]:
        """Every tag first, then one batch of changed tags per script step or `set_values`."""
        self._step()
        last = dict(self._values)
        yield self._samples(self._tags)
        while True:
            self._changed.clear()
            if not self._script:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._interval_s)
            self._step()
            changed = [n for n in self._tags if self._values.get(n) != last.get(n)]
            last = dict(self._values)
            if changed:
                yield self._samples(changed)

    async def aclose(self) -> None:
        """Forget the link. Idempotent; never raises."""
        self._connected = False
