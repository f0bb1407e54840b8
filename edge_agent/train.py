"""`edge-agent train`: recorded normal operation -> Digital Original residuals -> ONNX detector.

The normal operation comes from a CSV recording (a `ts` column in Unix seconds and one column
per tag, named as in the config) or, by default, from the rig's plant simulated faster than
real time (`hil.plant.simulate`, same physics, noise and control as the live rig). Residuals are
computed by `edge_agent.compare.residual_series`, the arithmetic the live agent uses, so the
detector learns exactly what it will be shown. The model-to-tag mapping is the demo config's
unless another config is given.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import structlog

from edge_agent.agent import build_model
from edge_agent.compare import residual_series
from edge_agent.config import Config, load_config
from hil.plant import simulate
from models.anomaly.train import train_detector
from models.base import F64

log = structlog.get_logger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


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


def train_main(
    *,
    out: Path,
    minutes: float,
    seed: int,
    data: Path | None,
    window: int,
    config: Path = DEMO_CONFIG,
    segment_s: float = 300.0,
    margin: float = 2.0,
) -> int:
    """Produce the detector file `out`; returns the exit code."""
    cfg = load_config(config)
    if data is not None:
        ts, cols = read_recording(data)
        source = str(data)
    else:
        log.info("simulating normal operation", minutes=minutes, seed=seed)
        ts, cols = simulate(minutes * 60.0, rate_hz=cfg.agent.tick_hz, seed=seed)
        source = f"hil.plant.simulate(minutes={minutes:g}, seed={seed})"
    # The live agent re-synchronises its model at start and after every outage, and scores
    # from one window after that; train on the same: segments each starting with a reset,
    # their first window dropped, so the settling after a reset is normal to the detector.
    n_seg = max(1, round((ts[-1] - ts[0]) / segment_s))
    parts = []
    for idx in np.array_split(np.arange(len(ts)), n_seg):
        seg = {k: v[idx] for k, v in cols.items()}
        res, names = residuals_from(cfg, config, ts[idx], seg)
        parts.append(res[window:])
    residuals = np.concatenate(parts)
    log.info("training detector", rows=len(residuals), outputs=len(names), window=window)
    blob = train_detector(residuals, names, window=window, seed=seed, margin=margin, progress=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out} ({len(blob)} bytes) from {source}")
    return 0
