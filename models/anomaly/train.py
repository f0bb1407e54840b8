"""Fits the anomaly detector from residuals recorded in normal operation and returns ONNX bytes.

Owns the statistics: cutting windows, the fit/holdout split, the robust covariance per tag and
the thresholds. It needs scikit-learn (the `train` extra), so it runs on an engineering
station, not on the gateway. The graph is built by `models.anomaly.graph`; the file format is
checked by `models.anomaly.detector`, whose runtime scores some training windows once as a
self-test against the float64 formula.

Split: the recording is cut into contiguous blocks and a seeded random `holdout` share of the
blocks is held back; windows that straddle two blocks are dropped. Overlapping windows from the
same stretch of time therefore never sit on both sides, which would make the thresholds
optimistic. The robust covariance (MinCovDet on a seeded subsample, then reweighted over all fit
windows; robust to a few abnormal stretches in "normal" data) is fitted on the fit blocks; the
squared distances of the holdout windows set the threshold:

    d2_threshold_j = margin * max(quantile_q(holdout d2_j), chi2_3.ppf(q))

The chi-squared floor keeps a short recording (few holdout windows) from setting a threshold
below what Gaussian noise alone would exceed.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

import numpy as np
import numpy.typing as npt
import structlog
from rich.progress import Progress
from sklearn.covariance import MinCovDet

from models.anomaly.detector import FEATURES, DetectorParams, OnnxDetector
from models.anomaly.graph import build_model, centred_ticks, slope_weights
from models.base import F64

log = structlog.get_logger(__name__)

MIN_FIT_WINDOWS = 200
MIN_HOLDOUT_WINDOWS = 50
# A stuck signal's log-std is log(EPS_REL * scale): far below normal, yet finite.
EPS_REL = 1e-3
# Regularises the covariance of standardised features (they have unit variance).
RIDGE = 1e-6
CLEAR_LEVEL = 0.7
_MAX_BLOCKS = 16
_SELF_TEST_WINDOWS = 64
MCD_SAMPLES = 500


def train_detector(
    residuals: npt.NDArray[np.floating],
    names: Sequence[str],
    *,
    window: int = 50,
    stride: int = 5,
    seed: int = 0,
    holdout: float = 0.25,
    quantile: float = 0.9999,
    margin: float = 1.5,
    progress: bool = False,
) -> bytes:
    """Fit a detector on normal-operation residuals `(T, J)` and return the ONNX model bytes.

    NaN marks an invalid residual; a window containing one is dropped for that tag only.
    Raises ValueError (with what to change) on wrong shapes, bad arguments or too little data.
    `created` is taken from SOURCE_DATE_EPOCH when set, so builds can be byte-reproducible.
    """
    data = _check_inputs(
        residuals,
        names,
        window=window,
        stride=stride,
        holdout=holdout,
        quantile=quantile,
        margin=margin,
    )
    names = tuple(names)
    n_ticks, n_out = data.shape
    fingerprint = training_fingerprint(data, names)
    rng = np.random.default_rng(seed)

    starts = np.arange(0, n_ticks - window + 1, stride)
    block = _blocks(n_ticks, window, rng, holdout)
    first, last = block.id[starts], block.id[starts + window - 1]
    keep = first == last
    is_holdout = keep & block.holdout[first]
    is_fit = keep & ~block.holdout[first]
    if not is_holdout.any() or not is_fit.any():
        raise ValueError(
            f"too little data to split: {n_ticks} ticks give no whole window of {window} ticks "
            f"in both the fit and holdout blocks; record longer (at least {40 * window} ticks)"
        )

    empty = [name for name, column in zip(names, data.T, strict=True) if np.isnan(column).all()]
    if empty:
        raise ValueError(f"outputs without any valid residual: {', '.join(map(repr, empty))}")
    scale = np.nanstd(data, axis=0)
    eps = EPS_REL * scale
    weights = slope_weights(window)
    k = len(FEATURES)
    mean_f, std_f = np.empty((n_out, k)), np.empty((n_out, k))
    loc, cov = np.empty((n_out, k)), np.empty((n_out, k, k))
    thr, q_hold = np.empty(n_out), np.empty(n_out)
    n_fit, n_hold = np.empty(n_out, dtype=np.int64), np.empty(n_out, dtype=np.int64)
    chi2_q = chi2_3_ppf(quantile)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("fitting detector", total=n_out)
        for j, name in enumerate(names):
            bar.update(task, description=f"fitting {name}")
            if not scale[j] > 0:
                raise ValueError(
                    f"output {name!r} has no residual variation in the training data; a "
                    "detector cannot learn its normal noise (check the recording)"
                )
            feats = window_features(data[:, j], starts, window, float(eps[j]), weights)
            finite = np.all(np.isfinite(feats), axis=1)
            fit, hold = feats[is_fit & finite], feats[is_holdout & finite]
            if len(fit) < MIN_FIT_WINDOWS or len(hold) < MIN_HOLDOUT_WINDOWS:
                raise ValueError(
                    f"too little normal data for output {name!r}: {len(fit)} fit and "
                    f"{len(hold)} holdout windows without NaN, need {MIN_FIT_WINDOWS} and "
                    f"{MIN_HOLDOUT_WINDOWS} (T={n_ticks}, window={window}, stride={stride}); "
                    "record longer or lower the stride"
                )
            mean_f[j], std_f[j] = fit.mean(axis=0), fit.std(axis=0)
            std_f[j] = np.where(std_f[j] > 0, std_f[j], 1.0)
            loc[j], cov[j] = robust_covariance((fit - mean_f[j]) / std_f[j], rng)
            d2 = mahalanobis2((hold - mean_f[j]) / std_f[j], loc[j], cov[j])
            q_hold[j] = float(np.quantile(d2, quantile))
            thr[j] = margin * max(q_hold[j], chi2_q)
            n_fit[j], n_hold[j] = len(fit), len(hold)
            bar.advance(task)

    params = DetectorParams(
        output_names=names,
        window=window,
        feature_mean=mean_f,
        feature_std=std_f,
        robust_location=loc,
        robust_covariance=cov,
        d2_threshold=thr,
        log_std_eps=eps,
        residual_scale=scale,
        raise_level=1.0,
        clear_level=CLEAR_LEVEL,
        provenance={
            "training_sha256": fingerprint,
            "created": _created(),
            "seed": str(seed),
            "stride": str(stride),
            "holdout": repr(float(holdout)),
            "quantile": repr(float(quantile)),
            "margin": repr(float(margin)),
            "d2_holdout_quantile": _json_floats(q_hold),
            "d2_chi2_quantile": repr(chi2_q),
            "fit_windows": _json_ints(n_fit),
            "holdout_windows": _json_ints(n_hold),
            "producer": f"edge-agent {_version()}",
        },
    )
    model = build_model(params)
    _self_test(model, params, data, starts)
    log.info(
        "detector trained",
        outputs=n_out,
        window=window,
        fit_windows=int(n_fit.min()),
        holdout_windows=int(n_hold.min()),
        training_sha256=fingerprint[:16],
    )
    return model


def robust_covariance(z: F64, rng: np.random.Generator) -> tuple[F64, F64]:
    """Robust location and covariance of rows of `z`: MinCovDet on at most `MCD_SAMPLES` rows
    (fast-MCD costs ~10x more above 500 rows), then one reweighting step over all rows that keeps
    those inside the 97.5 % chi-squared contour, as MinCovDet itself does."""
    sample = z if len(z) <= MCD_SAMPLES else z[rng.choice(len(z), MCD_SAMPLES, replace=False)]
    seed = int(rng.integers(2**31 - 1))
    mcd = MinCovDet(random_state=seed).fit(sample)
    ridge = RIDGE * np.eye(z.shape[1])
    inside = mahalanobis2(z, mcd.location_, mcd.covariance_ + ridge) < chi2_3_ppf(0.975)
    kept = z[inside]
    location: F64 = kept.mean(axis=0)
    covariance: F64 = np.cov(kept, rowvar=False, bias=True) + ridge
    return location, covariance


def window_features(
    series: F64, starts: npt.NDArray[np.int64], window: int, eps: float, weights: F64
) -> F64:
    """Features `(len(starts), 3)` of one tag's windows: mean, log(std about the fitted line +
    eps), slope per tick."""
    windows = np.lib.stride_tricks.sliding_window_view(series, window)[starts]
    mean = windows.mean(axis=1)
    centred = windows - mean[:, None]
    slope = centred @ weights
    detrended = centred - slope[:, None] * centred_ticks(window)[None, :]
    std = np.sqrt(np.mean(detrended * detrended, axis=1))
    out: F64 = np.stack([mean, np.log(std + eps), slope], axis=1)
    return out


def mahalanobis2(z: F64, location: F64, covariance: F64) -> F64:
    """Squared Mahalanobis distances of rows of `z`."""
    diff = z - location
    d2: F64 = np.einsum("nk,nk->n", diff, np.linalg.solve(covariance, diff.T).T)
    return d2


def chi2_3_ppf(q: float) -> float:
    """Quantile of the chi-squared distribution with 3 degrees of freedom (bisection)."""

    def cdf(x: float) -> float:
        return math.erf(math.sqrt(x / 2)) - math.sqrt(2 * x / math.pi) * math.exp(-x / 2)

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return 0.5 * (lo + hi)


def training_fingerprint(residuals: F64, names: Sequence[str]) -> str:
    """sha256 over the names, the shape and the float64 little-endian residual bytes."""
    h = hashlib.sha256()
    h.update("\n".join(names).encode())
    h.update(f"\0{residuals.shape}\0".encode())
    h.update(np.ascontiguousarray(residuals, dtype="<f8").tobytes())
    return h.hexdigest()


class _Blocks:
    """Block id per tick and which blocks are held back."""

    def __init__(self, ids: npt.NDArray[np.int64], holdout: npt.NDArray[np.bool_]) -> None:
        self.id = ids
        self.holdout = holdout


def _blocks(n_ticks: int, window: int, rng: np.random.Generator, holdout: float) -> _Blocks:
    n_blocks = int(np.clip(n_ticks // (20 * window), 2, _MAX_BLOCKS))
    ids = (np.arange(n_ticks) * n_blocks) // n_ticks
    n_hold = min(n_blocks - 1, max(1, round(holdout * n_blocks)))
    chosen = np.zeros(n_blocks, dtype=bool)
    chosen[rng.choice(n_blocks, size=n_hold, replace=False)] = True
    return _Blocks(ids.astype(np.int64), chosen)


def _check_inputs(
    residuals: npt.NDArray[np.floating],
    names: Sequence[str],
    *,
    window: int,
    stride: int,
    holdout: float,
    quantile: float,
    margin: float,
) -> F64:
    data = np.asarray(residuals, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"residuals must be 2-D (ticks, outputs), got shape {data.shape}")
    if isinstance(names, str) or len(names) != data.shape[1]:
        raise ValueError(f"{data.shape[1]} residual columns but names has {len(names)} entries")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError("names must be unique non-empty strings")
    if window < 3:
        raise ValueError(f"window must be at least 3 ticks, got {window}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    if not margin >= 1.0:
        raise ValueError(f"margin must be at least 1.0, got {margin}")
    if np.isinf(data).any():
        raise ValueError("residuals contain infinities; mark invalid residuals with NaN")
    if data.shape[0] < 2 * window:
        raise ValueError(
            f"too little data: {data.shape[0]} ticks for a window of {window}; record longer"
        )
    return data


def _self_test(
    model: bytes, params: DetectorParams, data: F64, starts: npt.NDArray[np.int64]
) -> None:
    """Score some training windows through onnxruntime and the float64 formula: a build bug
    (wrong layout, wrong folding) fails here instead of on the gateway."""
    detector = OnnxDetector.from_bytes(model, params.output_names, source="<trained detector>")
    windows = np.lib.stride_tricks.sliding_window_view(data, params.window, axis=0)[starts]
    windows = windows.transpose(0, 2, 1)  # (n, W, J)
    windows = windows[np.all(np.isfinite(windows), axis=(1, 2))][:_SELF_TEST_WINDOWS]
    if len(windows) == 0:
        return
    got = detector.score_batch(windows)
    want = reference_score(windows, params)
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        worst = float(np.max(np.abs(got - want)))
        raise RuntimeError(f"built detector disagrees with its parameters (max diff {worst})")


def reference_score(windows: F64, params: DetectorParams) -> F64:
    """Float64 scores `(n, J)` of windows `(n, W, J)` straight from the parameters."""
    n_out = len(params.output_names)
    weights = slope_weights(params.window)
    out = np.empty((windows.shape[0], n_out))
    starts = np.arange(windows.shape[0]) * params.window
    for j in range(n_out):
        series = windows[:, :, j].reshape(-1)
        feats = window_features(series, starts, params.window, params.log_std_eps[j], weights)
        z = (feats - params.feature_mean[j]) / params.feature_std[j]
        d2 = mahalanobis2(z, params.robust_location[j], params.robust_covariance[j])
        out[:, j] = np.sqrt(d2 / params.d2_threshold[j])
    return out


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    ts = float(epoch) if epoch else time.time()
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    try:
        return importlib_metadata.version("edge-agent")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _json_floats(values: F64) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def _json_ints(values: npt.NDArray[np.int64]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"
