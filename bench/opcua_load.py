"""Load source for `bench.opcua`: one asyncua server process changing N Double variables.

`python -m bench.opcua_load --port P --tags N` serves `ns=2;s=v<i>` (i = 0..N-1) at
`opc.tcp://127.0.0.1:P/` and rewrites every variable in turn as fast as the server can feed
its monitored items (about 17k changes/s per process on one core here), yielding to the event
loop every 200 writes so publish responses go out. It prints `ready` once listening and runs
until killed or until its standard input closes (the benchmark holds it open, so a killed
benchmark does not leave load servers behind). Several processes give several times the
rate (and each takes a core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from asyncua import ua
from asyncua.server.server import Server


async def serve(port: int, n_tags: int) -> None:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:edge-agent:bench")
    folder = await server.nodes.objects.add_folder(idx, "Load")
    nids = []
    for i in range(n_tags):
        nid = ua.NodeId(ua.String(f"v{i}"), ua.Int16(idx))
        await folder.add_variable(nid, ua.QualifiedName(f"v{i}", idx), 0.0, ua.VariantType.Double)
        nids.append(nid)
    async with server:
        print("ready", flush=True)
        # The benchmark holds our stdin open: EOF means it is gone, and so should we be.
        parent_gone = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))
        k = 0
        while not parent_gone.done():
            k += 1
            value = float(k)
            for j, nid in enumerate(nids):
                await server.write_attribute_value(
                    nid, ua.DataValue(ua.Variant(value + j, ua.VariantType.Double))
                )
                if j % 200 == 199:
                    await asyncio.sleep(0)
            await asyncio.sleep(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tags", type=int, default=1000)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.tags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
