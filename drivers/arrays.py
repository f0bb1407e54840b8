"""The array form of a batch of samples, for drivers that decode whole responses at once.

A polled driver that decodes a response into a NumPy vector (Modbus) would otherwise build one
`Sample` per value only for the process image to take it apart again. `SampleArrays` hands the
same information over column-wise: row k is the sample of tag `tags[tag[k]]`, with the same
meaning as the `Sample` fields (value NaN for BAD samples and for text tags; `reason` and
`text` hold only the rows that have one). A driver offers it through `ArrayReadable`, beside
its `read()`, which stays the contract every consumer can rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

EMPTY_INDEX: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)


class SampleArrays(NamedTuple):
    """One batch of samples as columns. A tag comes twice only when a unit timed out beside
    one of its answered requests; the later row is the one that stays, as with samples."""

    tag: npt.NDArray[np.intp]
    """Row k's tag: a position in the driver's `tags`."""
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int8]
    """`drivers.base.Quality` codes."""
    source_ts: npt.NDArray[np.float64]
    recv_ts: npt.NDArray[np.float64]
    reason: Mapping[int, str]
    """Row -> reason, only for rows whose reason is not empty."""
    text: Mapping[int, str]
    """Row -> text, only for text tags (their value is NaN)."""


def empty_arrays() -> SampleArrays:
    """A batch with no sample (nothing was due)."""
    nothing = np.zeros(0)
    return SampleArrays(EMPTY_INDEX, nothing, np.zeros(0, np.int8), nothing, nothing, {}, {})


@runtime_checkable
class ArrayReadable(Protocol):
    """A polled driver that can also read into `SampleArrays` (same errors as `read()`)."""

    @property
    def tags(self) -> Sequence[str]: ...

    async def read_arrays(self) -> SampleArrays:
        """Read every due tag once, as arrays. Raises `ConnectError` when the link is lost."""
        ...
