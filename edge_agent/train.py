"""`edge-agent train`: recorded normal operation -> Digital Original residuals -> ONNX detector.

The normal operation comes from a CSV recording (a `ts` column in Unix seconds and one column
per tag, named as in the config) or, by default, from the rig's plant simulated faster than
real time (`hil.plant.simulate`, same physics, noise and control as the live rig). Residuals are
computed by `edge_agent.compare.residual_series`, the arithmetic the live agent uses, so the
detector learns exactly what it will be shown. The model-to-tag mapping is the demo config's
unless another config is given.

A CSV in SKAB's format (`;`-separated with a `datetime` column, `models.anomaly.skab`) trains
the sensor-window detector instead (`models.anomaly.benchmark.train_from_file`, the code
`edge-agent evaluate` uses, with the documented default configuration): on a labelled file its
training part (the first 400 rows), on an unlabelled one every row. It never overwrites the
shipped rig detector: `--out` is required for it.

Segments: the live agent re-synchronises its model at start and after every outage, so the
training run is cut into segments that each start with a re-synchronisation (`--segment-min`,
default 60 minutes). A segment must be long against the slowest time constant of the plant
model, or most of what the detector sees is the settling after a re-synchronisation: the demo
loop's motor heats with a time constant of about 46 minutes (its observer's is 5 minutes), and
after a re-synchronisation the `motor_temp` residual's mean takes about 20 minutes to settle.
Trained on 5-minute segments, the detector learned that early transient as normal (a thin
false-alarm margin on `motor_temp` in long runs) and `fluid_temp`'s threshold came out four
times too wide (a drifting sensor took 10 s instead of 4 s to raise an alarm).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from edge_agent.agent import build_model
from edge_agent.compare import residual_series
from edge_agent.config import Config, load_config
from hil.plant import simulate
from models.anomaly.skab import looks_like_skab
from models.anomaly.train import train_detector
from models.base import F64

log = structlog.get_logger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
DEFAULT_SEGMENT_MIN = 60.0


def read_recording(path: Path) -> tuple[F64, dict[str, F64]]:
    """A CSV recording: `ts` plus one numeric column per tag; empty cells become NaN."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "ts" not in rows[0]:
        raise ValueError(f"{path}: expected a header with a 'ts' column and one column per tag")
    cols = {
        k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
        for k in rows[0]
    }
    ts = cols.pop("ts")
    return ts, cols


def write_recording(path: Path, ts: F64, cols: dict[str, F64]) -> None:
    """Write a recording in the format `read_recording` reads."""
    names = list(cols)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", *names])
        for k in range(len(ts)):
            w.writerow([f"{ts[k]:.3f}", *(f"{cols[n][k]:.6g}" for n in names)])


def residuals_from(
    cfg: Config, cfg_path: Path, ts: F64, cols: dict[str, F64]
) -> tuple[F64, tuple[str, ...]]:
    """Residuals of the configured model over a recording, and the model's output names."""
    model, _ = build_model(cfg, cfg_path)
    missing = [
        t for t in [*cfg.model.inputs.values(), *cfg.model.outputs.values()] if t not in cols
    ]
    if missing:
        raise ValueError(f"recording lacks the columns {missing}")
    inputs = np.column_stack([cols[cfg.model.inputs[n]] for n in model.input_names])
    outputs = np.column_stack([cols[cfg.model.outputs[n]] for n in model.output_names])
    return residual_series(model, ts, inputs, outputs), model.output_names


def _write(out: Path, blob: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


def train_sensor_main(*, out: Path, data: Path, seed: int) -> int:
    """Train the sensor-window detector from a SKAB-format CSV; returns the exit code."""
    from rich.progress import Progress  # noqa: PLC0415

    from edge_agent.config import DEFAULT_DETECTOR  # noqa: PLC0415
    from models.anomaly.benchmark import train_from_file  # noqa: PLC0415
    from models.anomaly.sensor_train import SensorConfig  # noqa: PLC0415
    from models.anomaly.skab import SkabFormatError, read_skab_csv  # noqa: PLC0415

    if out.resolve() == DEFAULT_DETECTOR.resolve():
        print(
            f"error: {data} trains a sensor-window detector; pass --out FILE (the default "
            f"{out} is the rig's residual detector)",
            file=sys.stderr,
        )
        return 2
    with Progress(transient=True) as bar:
        task = bar.add_task("reading", total=3)
        try:
            recording = read_skab_csv(data)
            bar.advance(task)

            def step(name: str) -> None:
                bar.update(task, description=name)

            root = skab_root(data)
            blob, rows, drift_rows = train_from_file(
                recording, SensorConfig(seed=seed), step, root=root
            )
        except (SkabFormatError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        bar.advance(task, 2)
    _write(out, blob)
    where = f"normal data under {root}" if root is not None else "the recording alone"
    print(
        f"wrote {out} ({len(blob)} bytes) from {data}: {rows} training rows, drift model "
        f"from {where} ({drift_rows} windows)"
    )
    return 0


def skab_root(data: Path) -> Path | None:
    """The SKAB-layout folder `data` sits in (`ROOT/group/file.csv`, other groups beside),
    or None when it is a lone file."""
    from models.anomaly.skab import SkabFormatError, discover  # noqa: PLC0415

    root = data.resolve().parent.parent
    try:
        labelled, unlabelled = discover(root)
    except (SkabFormatError, OSError):
        return None
    inside = {f.path.resolve() for f in (*labelled, *unlabelled)}
    return root if data.resolve() in inside else None


def train_main(
    *,
    out: Path,
    minutes: float,
    seed: int,
    data: Path | None,
    window: int,
    config: Path = DEMO_CONFIG,
    segment_min: float = DEFAULT_SEGMENT_MIN,
    margin: float = 2.0,
) -> int:
    """Produce the detector file `out`; returns the exit code."""
    if data is not None and looks_like_skab(data):
        return train_sensor_main(out=out, data=data, seed=seed)
    if not (math.isfinite(segment_min) and segment_min > 0):
        print(f"error: --segment-min {segment_min:g}: give a positive number", file=sys.stderr)
        return 2
    if data is None and segment_min > minutes:
        print(f"error: {_too_long(segment_min, minutes, 'raise --minutes')}", file=sys.stderr)
        return 2
    cfg = load_config(config)
    if data is not None:
        ts, cols = read_recording(data)
        source = str(data)
    else:
        log.info("simulating normal operation", minutes=minutes, seed=seed)
        ts, cols = simulate(minutes * 60.0, rate_hz=cfg.agent.tick_hz, seed=seed)
        source = f"hil.plant.simulate(minutes={minutes:g}, seed={seed})"
    try:
        bounds = segments(ts, segment_min * 60.0)
    except ValueError as exc:
        print(f"error: {source}: {exc}", file=sys.stderr)
        return 2
    # The live agent re-synchronises its model at start and after every outage, and scores
    # from one window after that; train on the same: segments each starting with a reset,
    # their first window dropped, so the settling after a reset is normal to the detector.
    log.info("segments", count=len(bounds), minutes=round(segment_min, 3))
    parts = []
    for idx in bounds:
        seg = {k: v[idx] for k, v in cols.items()}
        res, names = residuals_from(cfg, config, ts[idx], seg)
        parts.append(res[window:])
    residuals = np.concatenate(parts)
    log.info("training detector", rows=len(residuals), outputs=len(names), window=window)
    blob = train_detector(residuals, names, window=window, seed=seed, margin=margin, progress=True)
    _write(out, blob)
    print(f"wrote {out} ({len(blob)} bytes) from {source}")
    return 0


def segments(ts: F64, segment_s: float) -> list[npt.NDArray[np.intp]]:
    """Row indices of `ts` cut into as many equal segments as fit, each at least `segment_s`
    long; ValueError when the run is shorter than one segment."""
    if len(ts) < 2:
        raise ValueError(f"{len(ts)} rows: a recording needs at least two")
    step = float(np.median(np.diff(ts)))
    span = float(ts[-1] - ts[0]) + step  # n rows cover n sample periods
    if segment_s > span * (1 + 1e-9):
        raise ValueError(_too_long(segment_s / 60.0, span / 60.0, "record longer"))
    count = max(1, math.floor(span / segment_s * (1 + 1e-9)))
    return np.array_split(np.arange(len(ts)), count)


def _too_long(segment_min: float, run_min: float, fix: str) -> str:
    return (
        f"--segment-min {segment_min:g} is longer than the run ({run_min:.4g} minutes); {fix}, "
        "or shorten the segments (they should stay long against the plant's slowest time "
        "constant, see `edge-agent train --help`)"
    )
