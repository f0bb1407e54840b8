"""Benchmark: the agent's per-value work in process, dict/object path vs the array path.

    uv run python -m bench.tick_path [--quick] [--repeats N]

Two steps of every value's way through the agent, at N = 1,000 and 10,000 tags, all due
(deadband 0, every value changed), with load-rig-like data (float32 values, one receive time
per Modbus request of 54 tags):

- `image`: a poll's decoded vectors into the process image. Baseline: one `Sample` per value
  (built as the Modbus driver's `read` builds them) and `ProcessImage.update`; contender:
  `ProcessImage.update_arrays` with the vectors (what `read_arrays` hands over).
- `encode`: the deltas of one tick as `deltas` messages of 1,000. Baseline: one `tag_doc` dict
  per tag and `json.dumps` (`Reporter.docs` + `Reporter.batches`); contender:
  `Reporter.encode_batches` (the same bytes, checked before timing).

The load-rig benchmarks (`bench.throughput`) measure the whole agent; this one isolates the
steps the array path replaced, so their gain is visible on a noisy machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from bench.harness import Options, Row, interleaved, parse_args, report
from drivers.base import Quality, Sample
from edge_agent.image import ProcessImage
from edge_agent.report import Reporter, TickColumns

NAME = "tick_path"
PER_REQUEST = 54


def _names(n: int) -> list[str]:
    return [f"p{i // 18}_tag{i % 18}" for i in range(n)]


def _image_cases(n: int, rng: np.random.Generator) -> dict[str, tuple[Callable[[], object], float]]:
    names = _names(n)
    image = ProcessImage(names, [(-1e6, 1e6)] * n)
    values = rng.normal(50.0, 10.0, n).astype(np.float32).astype(np.float64)
    stamps = np.repeat(1.7e9 + np.arange(-(-n // PER_REQUEST)) * 1e-3, PER_REQUEST)[:n]
    pos = image.positions(names)
    good = Quality.GOOD

    def samples() -> None:
        out: list[Sample] = []
        for k in range(0, n, PER_REQUEST):  # per request, as `ModbusDriver.read`
            t = float(stamps[k])
            part = zip(names[k : k + PER_REQUEST], values[k : k + PER_REQUEST].tolist(),
                       repeat(good), repeat(t), repeat(t), repeat(""), repeat(None),
                       repeat(math.nan))  # fmt: skip
            out.extend(map(Sample._make, part))
        image.update(out)

    def arrays() -> None:
        image.update_arrays(pos, values, np.zeros(n, dtype=np.int8), stamps, stamps)

    return {"samples + update": (samples, n), "update_arrays": (arrays, n)}


def _encode_cases(
    n: int, rng: np.random.Generator
) -> dict[str, tuple[Callable[[], object], float]]:
    rep = Reporter(_names(n), ["degC"] * n, [0.0] * n, heartbeat_s=10.0, topic_prefix="p/gw")
    nan = np.full(n, np.nan)
    stamps = np.repeat(1.7e9 + np.arange(-(-n // PER_REQUEST)) * 1e-3, PER_REQUEST)[:n]
    cols = TickColumns(
        value=rng.normal(50.0, 10.0, n).astype(np.float32).astype(np.float64),
        source_ts=stamps,
        quality=np.zeros(n, dtype=np.int8),
        reason=[""] * n,
        reasoned=np.zeros(n, dtype=np.bool_),
        predicted=nan,
        residual=nan,
        score=nan,
        cusum=nan,
        alarm=np.zeros(n, dtype=np.int8),
        modelled=np.zeros(n, dtype=np.bool_),
    )
    idx = np.arange(n)
    now = 1.7e9 + 0.1

    def dicts() -> list[bytes]:
        return rep.batches(now, rep.docs(now, idx, cols), 1000)

    def arrays() -> list[bytes]:
        return rep.encode_batches(now, idx, cols, 1000)

    if dicts() != arrays():
        raise AssertionError("the array encoder's bytes differ from json.dumps of the dicts")
    return {"dicts + json.dumps": (dicts, n), "encode_batches": (arrays, n)}


def run(opts: Options, sizes: Sequence[int]) -> Path:
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    for n in sizes:
        for step, build in (("image", _image_cases), ("encode", _encode_cases)):
            cases = build(n, rng)
            times = interleaved(cases, opts.repeats, opts.run_s)
            base = next(iter(cases))
            for case, samples in times.items():
                rows.append(Row(f"{step} N={n}", case, "ns/value", [s * 1e9 for s in samples],
                                None if case == base else base))  # fmt: skip
    note = "every tag due and changed each call; ns of wall time per value"
    config = {"sizes": list(sizes), "per_request": PER_REQUEST}
    return report(NAME, opts, rows, config=config, notes=[note])


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(__doc__.splitlines()[0] if __doc__ else NAME, argv)
    run(opts, (100,) if opts.quick else (1000, 10000))


if __name__ == "__main__":
    main()
