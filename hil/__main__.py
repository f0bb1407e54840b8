"""`python -m hil`: run the rig standalone until Ctrl-C, printing its endpoints and tags.

This module owns the command line only; the rig itself is `hil.rig.Rig`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from hil.faults import FAULT_KINDS, parse_fault
from hil.rig import Rig
from hil.tags import TAGS


def _parser() -> argparse.ArgumentParser:
    kinds = "\n".join(f"  {k:12s} {d}" for k, d in FAULT_KINDS.items())
    parser = argparse.ArgumentParser(
        prog="python -m hil",
        description="Simulated water-circulation loop behind an OPC UA and a Modbus TCP PLC.",
        epilog=f"fault kinds (KIND[:key=value,...]@SIM_SECONDS):\n{kinds}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument("--opcua-port", type=int, default=4840, help="0 picks a free port")
    parser.add_argument("--modbus-port", type=int, default=5020, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="scenario and noise seed")
    parser.add_argument("--speed", type=float, default=1.0, help="sim seconds per wall second")
    parser.add_argument("--publish-hz", type=float, default=10.0, help="PLC update rate")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="e.g. drift@30; repeatable"
    )
    parser.add_argument(
        "--duration-s", type=float, default=None, help="stop after this many wall seconds"
    )
    return parser


async def _main(args: argparse.Namespace) -> None:
    faults = [parse_fault(spec) for spec in args.fault]
    async with Rig(
        host=args.host,
        opcua_port=args.opcua_port,
        modbus_port=args.modbus_port,
        seed=args.seed,
        speed=args.speed,
        publish_hz=args.publish_hz,
        faults=faults,
    ) as rig:
        print(f"opcua  {rig.opcua_endpoint}")
        print(f"modbus {rig.modbus_host}:{rig.modbus_port} unit 1")
        for tag in TAGS:
            where = f"ir {tag.address} {tag.reg_type} {tag.order}" if tag.plc == "drive" else ""
            print(f"  {tag.plc:8s} {tag.name:14s} {tag.unit:6s} {where}")
        sys.stdout.flush()
        if args.duration_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(args.duration_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        for spec in args.fault:
            parse_fault(spec)
    except ValueError as exc:
        print(f"error: --fault: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
