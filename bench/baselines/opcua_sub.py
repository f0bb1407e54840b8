"""Baseline: a bare asyncua subscription client with the usual handler object, values only.

    python -m bench.baselines.opcua_sub --tags N ENDPOINT [ENDPOINT ...]

One `Client` per rig process, one subscription (100 ms publishing interval) with every tag of
the process monitored (100 ms sampling), a handler whose `datachange_notification` counts.
This is asyncua's documented way to receive changes, and the floor for a driver built on it.
With `--publish HOST:PORT` it also publishes each stamp it receives (end-to-end delay floor).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from asyncua import ua
from asyncua.client.client import Client

from bench.baselines.common import Count, StampPublisher
from hil.load.layout import NAMESPACE_URI, part_slices, tags_of_instance


class Handler:
    """asyncua calls `datachange_notification` once per changed value."""

    def __init__(self, count: Count, pub: StampPublisher | None) -> None:
        self.count = count
        self.pub = pub

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.count.values += 1
        if self.pub is not None:
            name = node.nodeid.Identifier
            if isinstance(name, str) and name.endswith("_stamp"):
                self.pub.publish(name, float(val))


async def subscribe(
    endpoint: str, names: list[str], count: Count, pub: StampPublisher | None
) -> None:
    client = Client(endpoint, timeout=30)
    async with client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [client.get_node(ua.NodeId(ua.String(n), ua.Int16(idx))) for n in names]
        sub = await client.create_subscription(100, Handler(count, pub))
        await sub.subscribe_data_change(nodes, sampling_interval=ua.Double(100.0))
        await count.stop.wait()


async def _main(n_tags: int, endpoints: Sequence[str], broker: str | None) -> None:
    pub = StampPublisher(broker) if broker else None
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    count = Count()
    count.serve_stdin()
    slices = part_slices(n_tags, len(endpoints))
    await asyncio.gather(
        *(
            subscribe(ep, [t.name for i in inst for t in tags_of_instance(n_tags, i)], count, pub)
            for ep, inst in zip(endpoints, slices, strict=True)
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines.opcua_sub")
    p.add_argument("--tags", type=int, required=True)
    p.add_argument("--publish", default=None, metavar="HOST:PORT", help="publish the stamps")
    p.add_argument("endpoints", nargs="+", help="opc.tcp:// endpoint of each rig process")
    args = p.parse_args(argv)
    asyncio.run(_main(args.tags, args.endpoints, args.publish))
    return 0


if __name__ == "__main__":
    sys.exit(main())
