"""Baseline: a bare pymodbus polling loop over the load rig's registers, values only.

    python -m bench.baselines.modbus_poll --tags N ENDPOINT [ENDPOINT ...]

One `AsyncModbusTcpClient` per rig process (as the agent has one driver per PLC), each polling
every register of its instances at 10 Hz in reads of 108 registers (three plant instances, 54
two-register values), decoded with NumPy as big-endian float32 and counted. No quality, no
image, no model, no publishing: the floor a Modbus driver on pymodbus can reach. With
`--publish HOST:PORT` it also publishes each instance's stamp (the end-to-end delay floor).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import numpy as np
from pymodbus.client import AsyncModbusTcpClient

from bench.baselines.common import Count, StampPublisher
from hil.load.layout import (
    MODBUS_UNIT,
    REGS_PER_INSTANCE,
    REGS_PER_TAG,
    modbus_address,
    part_slices,
    tag_name,
    tags_in_instance,
)

CHUNK = 3 * REGS_PER_INSTANCE
PERIOD_S = 0.1


def chunks(n_tags: int, instances: range) -> list[tuple[int, int]]:
    """(address, count) reads covering every register of the part's tags."""
    # Every instance but the rig's last is complete; the last may end inside its block.
    last = instances.stop - 1
    n_regs = modbus_address(len(instances) - 1, 0) + tags_in_instance(n_tags, last) * REGS_PER_TAG
    return [(a, min(CHUNK, n_regs - a)) for a in range(0, n_regs, CHUNK)]


async def poll(
    host: str,
    port: int,
    reads: list[tuple[int, int]],
    count: Count,
    *,
    first_instance: int,
    pub: StampPublisher | None,
) -> None:
    client = AsyncModbusTcpClient(host, port=port, timeout=1.0, retries=0)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to {host}:{port}")
    loop = asyncio.get_running_loop()
    next_t = loop.time()
    while not count.stop.is_set():
        for address, n in reads:
            rsp = await client.read_input_registers(address, count=n, device_id=MODBUS_UNIT)
            values = np.array(rsp.registers, dtype=np.uint16).astype(">u2").view(">f4")
            count.values += len(values)
            if pub is not None:
                regs = rsp.registers
                for k in range(0, n, REGS_PER_INSTANCE):
                    i = first_instance + (address + k) // REGS_PER_INSTANCE
                    pub.publish(tag_name(i, "stamp"), (regs[k] << 16) | regs[k + 1])
        next_t += PERIOD_S
        delay = next_t - loop.time()
        if delay < 0:
            next_t, delay = loop.time(), 0.0
        await asyncio.sleep(delay)
    client.close()


async def _main(n_tags: int, endpoints: Sequence[str], broker: str | None) -> None:
    pub = StampPublisher(broker) if broker else None
    count = Count()
    count.serve_stdin()
    slices = part_slices(n_tags, len(endpoints))
    tasks = []
    for endpoint, instances in zip(endpoints, slices, strict=True):
        host, _, port = endpoint.rpartition(":")
        tasks.append(
            asyncio.create_task(
                poll(
                    host,
                    int(port),
                    chunks(n_tags, instances),
                    count,
                    first_instance=instances.start,
                    pub=pub,
                )
            )
        )
    await count.stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if pub is not None:
        pub.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines.modbus_poll")
    p.add_argument("--tags", type=int, required=True)
    p.add_argument("--publish", default=None, metavar="HOST:PORT", help="publish the stamps")
    p.add_argument("endpoints", nargs="+", help="host:port of each rig process")
    args = p.parse_args(argv)
    asyncio.run(_main(args.tags, args.endpoints, args.publish))
    return 0


if __name__ == "__main__":
    sys.exit(main())
