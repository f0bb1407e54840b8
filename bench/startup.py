"""Benchmark: process start to first prediction, with a cold and a warm numba cache.

Owns the start-up benchmark. Each run spawns a fresh interpreter (`bench.startup_child`) that
imports what the agent imports, loads the built-in Digital Original (`DEFAULT_SPEC`, the
authored water loop) as `SpecModel` and steps it once, loads the shipped `OnnxDetector` and
scores one window, then reports. The time is taken from just before the
spawn to the first prediction (both on the machine's monotonic clock), so interpreter start
and every import count.

- cold: `NUMBA_CACHE_DIR` is a new empty temporary directory, so numba compiles;
- warm: the directory a cold run filled, used again (the agent's normal restart).

Runs alternate cold, warm and "warm, read-only bytecode": numba's cache warm, Python writing
no bytecode and using only the .pyc files the installation already has (a service user
without write access to the environment; `uv sync --compile-bytecode` decides what exists).
Bytecode otherwise goes to a temporary PYTHONPYCACHEPREFIX, filled by a first uncounted run,
so cold and warm differ only in numba's cache. The bare interpreter (`python` importing
nothing) is measured in the same run for scale.

    uv run python -m bench.startup [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Options, Row, Target, parse_args, report

NAME = "startup"
TARGET_WARM_S = 1.5
FULL_REPEATS = 5
CHILD_TIMEOUT_S = 180.0


class ChildError(RuntimeError):
    """The measured process failed or reported no first prediction."""


def spawn(
    mode: str, cache_dir: Path | None, pycache: Path | None, *, inherit: bool = False
) -> tuple[float, dict[str, float]]:
    """One fresh process: (seconds from spawn to first prediction, its phase durations).

    `pycache` set: Python keeps its bytecode there (PYTHONPYCACHEPREFIX), never in the tree or
    the environment. None: no prefix and PYTHONDONTWRITEBYTECODE, as a read-only install runs:
    modules with a .pyc from install time load it, the others compile on every start.
    `inherit`: the environment's own settings and caches, untouched.
    """
    env = dict(os.environ)
    if not inherit:
        if cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = str(cache_dir)
        if pycache is not None:
            env["PYTHONPYCACHEPREFIX"] = str(pycache)
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        else:
            env.pop("PYTHONPYCACHEPREFIX", None)
            env["PYTHONDONTWRITEBYTECODE"] = "1"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.startup_child", mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        detail = (lines[-1] if lines else proc.stderr.strip().splitlines()[-1:]) or "no output"
        raise ChildError(f"{mode} start-up run failed (exit {proc.returncode}): {detail}")
    data: dict[str, Any] = json.loads(lines[-1])
    return float(data["ready_monotonic"]) - t0, {k: float(v) for k, v in data["phases"].items()}


KINDS = ("cold", "warm", "warm, read-only bytecode")


def measure(mode: str, repeats: int, tmp: Path, quick: bool) -> dict[str, Any]:
    """Alternating cold and warm runs of `mode`: samples (s) and median phases for each kind.

    A first, uncounted run fills the bytecode prefix and the warm numba directory, so cold
    differs from warm only in numba's cache. A quick run (a smoke run, not a result) measures
    only a warm start with the environment's own caches, as tests have already filled them.
    """
    if quick:
        total, ph = spawn(mode, None, None, inherit=True)
        return {"samples": {"warm": [total]}, "phases": {"warm": ph}}
    warm_dir = tmp / f"{mode}-numba-warm"
    pycache = tmp / "pycache"
    samples: dict[str, list[float]] = {k: [] for k in KINDS}
    phases: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    spawn(mode, warm_dir, pycache)
    for i in range(repeats):
        plan = {
            "cold": (tmp / f"{mode}-numba-cold-{i}", pycache),
            "warm": (warm_dir, pycache),
            "warm, read-only bytecode": (warm_dir, None),
        }
        for kind in KINDS:
            total, ph = spawn(mode, *plan[kind])
            samples[kind].append(total)
            phases[kind].append(ph)
    medians = {
        kind: {k: statistics.median(p[k] for p in runs) for k in runs[0]}
        for kind, runs in phases.items()
    }
    return {"samples": samples, "phases": medians}


def _phase_note(mode: str, kind: str, phases: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.3f}" for k, v in phases.items())
    return f"{mode} {kind} phases (median s): {parts}"


def run(opts: Options) -> Path:
    repeats = opts.repeats
    rows: list[Row] = []
    notes: list[str] = []
    bare = [spawn("bare", None, None, inherit=opts.quick)[0] for _ in range(repeats)]
    rows.append(Row("interpreter", "python, no imports", "s", bare))
    modes = ["engine"]
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="bench-numba-") as tmp:
        for mode in modes:
            result = measure(mode, repeats, Path(tmp), opts.quick)
            group = {"engine": "SpecModel + OnnxDetector"}[mode]
            for kind, samples in result["samples"].items():
                base = "cold" if "cold" in result["samples"] and kind != "cold" else None
                rows.append(Row(group, kind, "s", samples, base))
                notes.append(_phase_note(mode, kind, result["phases"][kind]))
            warm = statistics.median(result["samples"]["warm"])
            targets.append(
                Target(
                    f"{group}: warm start to first prediction",
                    warm,
                    TARGET_WARM_S,
                    "s",
                    warm < TARGET_WARM_S,
                )
            )
    notes.append("time = spawn to first prediction, on the monotonic clock; ratio = cold / warm")
    return report(
        NAME,
        opts,
        rows,
        targets=targets,
        notes=notes,
        config={"repeats": repeats, "modes": modes},
    )


def main(argv: Sequence[str] | None = None) -> None:
    description = __doc__.splitlines()[0] if __doc__ else NAME
    run(parse_args(description, argv, default_repeats=(1, FULL_REPEATS)))


if __name__ == "__main__":
    main()
