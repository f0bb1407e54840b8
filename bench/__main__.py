"""Run every benchmark in turn: `uv run python -m bench [--quick] [--results-dir DIR]`.

Owns only the list of benchmarks and the order they run in; each one prints its own table and
writes its own `bench/results/<name>.json`. `--list` prints the names and exits.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

BENCHMARKS: tuple[str, ...] = (
    "model_step",
    "detector",
    "startup",
    "throughput",
    "e2e_delay",
    "bandwidth",
    "modbus",
    "uplink",
    "detector_skab",
    "opcua",
    "opcua_nodered",
    "tick_path",
    "rig_detection",
    "writeback",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--list" in args:
        print("\n".join(BENCHMARKS))
        return 0
    if "-h" in args or "--help" in args:
        print(__doc__)
        print("benchmarks: " + ", ".join(BENCHMARKS) + "; each also runs as python -m bench.<name>")
        return 0
    for name in BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        module.main(args)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
