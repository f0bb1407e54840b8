"""Writeback on the tick path: what `Writeback.observe` adds to a tick, against the alarm step.

`uv run python -m bench.writeback [--quick]`. The tick calls `observe` once (pure CPU: it
computes each target's value from the alarm state and leaves it in a slot; the writes run in
their own tasks). Measured over the demo's image (17 tags plus the panel's 3):

- baseline `alarms.update`: `AlarmTracker.update` over the same image, the step `observe`
  follows in the tick;
- `observe, steady`: three targets (alarm word, health, heartbeat), nothing changes (the
  common case: one comparison per target);
- `observe, changing`: an alarm toggles on every call, so the alarm word and health change
  each time and are handed to their slots (the burst case the rate limit absorbs).

No writer task runs: this times the tick's share only. The writers are never called.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.harness import Options, Row, Target, interleaved, parse_args, report
from drivers.base import WriteResult
from edge_agent.alarms import AlarmTracker
from edge_agent.writeback import Target as WbTarget
from edge_agent.writeback import Writeback

NAME = "writeback"
N_TAGS = 20
TARGET_US = 50.0  # per tick, for three targets: 0.05 % of a 10 Hz tick


class _NoWrites:
    name = "panel"

    async def write(self, name: str, value: float | str) -> WriteResult:
        raise AssertionError("the benchmark runs no writer task")


def run(opts: Options) -> None:
    names = [f"t{i:02d}" for i in range(N_TAGS)]
    alarms = AlarmTracker(tuple(names))
    score = np.linspace(0.0, 0.9, N_TAGS)
    bad = np.zeros(N_TAGS, dtype=np.bool_)
    reasons = [""] * N_TAGS
    word = tuple(names[:6])
    targets = [
        WbTarget("panel", "alarm_word", "alarm_word", word, 1.0, 60.0),
        WbTarget("panel", "health", "health", tuple(names), 1.0, 60.0),
        WbTarget("panel", "heartbeat", "heartbeat", (), 3600.0, 0.0),
    ]
    steady = Writeback(targets, {"panel": _NoWrites()}, names)
    changing = Writeback(targets, {"panel": _NoWrites()}, names)
    quiet = np.zeros(N_TAGS, dtype=np.bool_)
    alarm = quiet.copy()
    alarm[2] = True
    steady.observe(quiet, quiet)
    now = [0.0]

    def update() -> None:
        now[0] += 0.1
        alarms.update(now[0], score, bad, reasons)

    def observe_changing() -> None:
        changing.observe(alarm, quiet)
        changing.observe(quiet, quiet)

    samples = interleaved(
        {
            "alarms.update": (update, 1.0),
            "observe, steady": (lambda: steady.observe(quiet, quiet), 1.0),
            "observe, changing": (observe_changing, 2.0),
        },
        opts.repeats,
        opts.run_s,
    )
    rows = [
        Row(
            "tick",
            case,
            "us",
            [x * 1e6 for x in samples[case]],
            None if case == "alarms.update" else "alarms.update",
        )
        for case in ("alarms.update", "observe, steady", "observe, changing")
    ]
    worst = max(rows[1].median, rows[2].median)
    report(
        NAME,
        opts,
        rows,
        targets=[
            Target(
                "observe per tick, 3 targets, worst case", worst, TARGET_US, "us", worst < TARGET_US
            )
        ],
        notes=[
            f"{N_TAGS} tags; targets: alarm word over 6 tags, health over all, heartbeat",
            "observe runs on the tick; its value is the share of a 100 ms tick it takes",
        ],
        config={"tags": N_TAGS, "targets": len(targets)},
    )


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0] if __doc__ else NAME, argv))


if __name__ == "__main__":
    main()
