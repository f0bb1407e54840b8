"""`python -m hil.load`: run the load rig until Ctrl-C, print its endpoints, write an agent config.

    uv run python -m hil.load --tags 10000 --protocol modbus --processes 2 --config load.toml

Owns the command line only; the processes are `hil.load.rig.LoadRig`, the config text
`hil.load.config.agent_config`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hil.load.config import agent_config
from hil.load.layout import TAGS_PER_INSTANCE, instance_count, part_slices
from hil.load.rig import LoadRig, LoadRigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hil.load",
        description="Many simulated plants behind Modbus TCP or OPC UA servers, 10 Hz changes.",
    )
    p.add_argument(
        "--tags", type=int, required=True, help=f"tags in all ({TAGS_PER_INSTANCE} per plant)"
    )
    p.add_argument("--protocol", choices=("modbus", "opcua"), required=True)
    p.add_argument("--processes", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--hz", type=float, default=10.0, help="value changes per tag per second")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--config", type=Path, default=Path("load-agent.toml"), help="agent config written here"
    )
    p.add_argument("--mqtt", default="127.0.0.1:1883", help="broker for the agent config")
    p.add_argument(
        "--deadbands", choices=("every", "exception"), default="every",
        help="every: deadband 0 (publish every sample); exception: realistic deadbands",
    )  # fmt: skip
    p.add_argument("--no-detector", action="store_true", help="detector off in the config")
    p.add_argument("--state-dir", default="state", help="agent state_dir (numba cache)")
    p.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        part_slices(args.tags, args.processes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mqtt_host, _, mqtt_port = args.mqtt.rpartition(":")
    try:
        with LoadRig(args.tags, args.protocol, args.processes, hz=args.hz, host=args.host,
                     seed=args.seed) as rig:  # fmt: skip
            text = agent_config(
                args.protocol,
                args.tags,
                rig.endpoints,
                mqtt_host=mqtt_host or "127.0.0.1",
                mqtt_port=int(mqtt_port),
                deadbands=args.deadbands,
                detector=not args.no_detector,
                state_dir=args.state_dir,
            )
            args.config.write_text(text)
            n = instance_count(args.tags)
            print(f"{args.protocol}: {args.tags} tags, {n} plant instances, {args.hz:g} Hz")
            for w in rig.workers:
                first, stop = w.instances
                print(f"  {w.endpoint}  instances {first}..{stop - 1}  {w.tags} tags")
            print(f"agent config: {args.config}  (edge-agent run --config {args.config})")
            sys.stdout.flush()
            t0 = time.monotonic()
            with contextlib.suppress(KeyboardInterrupt):
                while args.duration_s is None or time.monotonic() - t0 < args.duration_s:
                    time.sleep(1.0)
                    if any(w.proc.poll() is not None for w in rig.workers):
                        print("error: a load worker exited", file=sys.stderr)
                        return 1
            off = rig.offered()
            print(f"served {off['values']:.0f} values, {off['skipped']:.0f} ticks skipped")
    except LoadRigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
