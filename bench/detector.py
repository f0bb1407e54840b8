"""Benchmark: the ONNX detector's single-window latency and batch throughput against NumPy.

Owns the detector benchmark. The contender is `OnnxDetector` loaded from the shipped
`models/anomaly/loop_detector.onnx` with the runtime's own session options (one intra-op
thread, sequential). The baseline, `NumpyScorer`, computes the same features (mean, log of the
standard deviation about the least-squares line plus epsilon, slope per tick) and the same
Mahalanobis distance from the file's parameters in float64, vectorised over windows and tags,
as `models.anomaly.train.reference_score` defines them; the 3x3 precision matrices divided by
the threshold are precomputed once, as the ONNX graph folds them. Both are checked to agree
before timing.

Cases: one window (the agent's per-tick call, `score`), then batches of windows
(`score_batch`), in microseconds per window.

    uv run python -m bench.detector [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.harness import Options, Row, interleaved, parse_args, report
from models.anomaly.detector import DetectorParams, OnnxDetector

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
NAME = "detector"
DETECTOR_PATH = Path(__file__).resolve().parents[1] / "models" / "anomaly" / "loop_detector.onnx"


class NumpyScorer:
    """Float64 scores of windows `(n, W, J)` from a detector's parameters, in NumPy."""

    def __init__(self, params: DetectorParams) -> None:
        w = params.window
        t = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
        self.ticks = t
        self.weights = t / float(np.dot(t, t))
        self.eps = params.log_std_eps
        self.mean_f = params.feature_mean
        self.std_f = params.feature_std
        self.loc = params.robust_location
        self.precision = (
            np.linalg.inv(params.robust_covariance) / params.d2_threshold[:, None, None]
        )

    def score(self, windows: F64) -> F64:
        """Scores `(n, J)`; 1.0 is the alarm threshold."""
        x = np.asarray(windows, dtype=np.float64)
        mean = x.mean(axis=1)  # (n, J)
        centred = x - mean[:, None, :]
        slope = np.einsum("nwj,w->nj", centred, self.weights)
        detrended = centred - slope[:, None, :] * self.ticks[None, :, None]
        std = np.sqrt(np.mean(detrended * detrended, axis=1))
        feats = np.stack([mean, np.log(std + self.eps), slope], axis=-1)  # (n, J, 3)
        z = (feats - self.mean_f) / self.std_f - self.loc
        d2 = np.einsum("njk,jkl,njl->nj", z, self.precision, z)
        out: F64 = np.sqrt(d2)
        return out


def make_windows(detector: OnnxDetector, n: int, seed: int = 0) -> F32:
    """`n` windows of normal-looking residuals (Gaussian at each tag's residual scale)."""
    rng = np.random.default_rng(seed)
    shape = (n, detector.window, len(detector.output_names))
    noise = rng.standard_normal(shape) * detector.residual_scale
    out: F32 = noise.astype(np.float32)
    return out


def check_agreement(detector: OnnxDetector, scorer: NumpyScorer, windows: F32) -> float:
    """Largest absolute score difference between onnxruntime (float32) and NumPy (float64)."""
    got = detector.score_batch(windows)
    want = scorer.score(windows.astype(np.float64))
    diff = float(np.max(np.abs(got - want)))
    if not diff < 1e-2:
        raise RuntimeError(f"NumPy scorer disagrees with the ONNX detector (max diff {diff})")
    return diff


def check_reference(detector: OnnxDetector, scorer: NumpyScorer, windows: F32) -> float:
    """Largest difference between this NumPy scorer and `reference_score` (float64 both)."""
    from models.anomaly.train import reference_score  # noqa: PLC0415  # imports scikit-learn

    want = reference_score(windows.astype(np.float64), detector.params)
    return float(np.max(np.abs(scorer.score(windows.astype(np.float64)) - want)))


def run(opts: Options) -> Path:
    detector = OnnxDetector.load(DETECTOR_PATH)
    scorer = NumpyScorer(detector.params)
    check = make_windows(detector, 256, seed=1)
    onnx_diff = check_agreement(detector, scorer, check)
    notes = [f"onnxruntime (float32) vs NumPy (float64) scores agree to {onnx_diff:.1e}"]
    if not opts.quick:
        ref_diff = check_reference(detector, scorer, check)
        notes.append(f"NumPy scorer vs models.anomaly.train.reference_score: {ref_diff:.1e}")

    rows: list[Row] = []
    single = make_windows(detector, 1)[0]
    single64 = single.astype(np.float64)[None]
    cases: dict[str, tuple[Callable[[], object], float]] = {
        "numpy": (lambda: scorer.score(single64), 1),
        "onnx score": (lambda: detector.score(single), 1),
    }
    times = interleaved(cases, opts.repeats, opts.run_s)
    rows += [
        Row(
            "1 window",
            name,
            "us/window",
            [s * 1e6 for s in samples],
            None if name == "numpy" else "numpy",
        )
        for name, samples in times.items()
    ]

    batches: Sequence[int] = (100,) if opts.quick else (10, 100, 1000)
    for n in batches:
        windows = make_windows(detector, n, seed=n)
        windows64 = windows.astype(np.float64)
        cases = {
            "numpy": (partial(scorer.score, windows64), n),
            "onnx score_batch": (partial(detector.score_batch, windows), n),
        }
        times = interleaved(cases, opts.repeats, opts.run_s)
        for name, samples in times.items():
            us = [s * 1e6 for s in samples]
            rows.append(
                Row(
                    f"batch {n}",
                    name,
                    "us/window",
                    us,
                    None if name == "numpy" else "numpy",
                    extra={"windows_per_s": 1e6 / float(np.median(us))},
                )
            )
    shape = (detector.window, len(detector.output_names))
    notes.append(f"window shape {shape} (ticks x outputs); session: one intra-op thread")
    return report(
        NAME,
        opts,
        rows,
        notes=notes,
        config={"detector": DETECTOR_PATH.name, "window": shape, "batches": list(batches)},
    )


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0] if __doc__ else NAME, argv))


if __name__ == "__main__":
    main()
