"""Builds the detector's ONNX graph from fitted parameters (feature extraction included).

The graph takes raw residual windows `residuals` of shape `(n, window, J)` float32 and returns
`score` `(n, J)` and `features` `(n, 3, J)`. Per tag and window it computes the mean, the
least-squares slope per tick (a fixed-weight MatMul), the log of the population standard
deviation around that line (plus a small per-tag epsilon; detrended, so a ramp does not mask a
signal that stopped moving), then the Mahalanobis distance to the robust centre of normal
windows, folded into one per-tag 3x3 whitening matrix that already includes the threshold:

    score_j = sqrt(|(f_j - centre_j) / std_j @ L_j|^2 / d2_threshold_j),  L_j L_j^T = cov_j^-1

This module owns the graph only; the numbers come from `models.anomaly.train` and the file
format (metadata) from `models.anomaly.detector`. It imports `onnx`, which the runtime avoids.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.anomaly.detector import (
    FEATURES,
    FEATURES_OUTPUT,
    FORMAT_VERSION,
    INPUT_NAME,
    SCORE_OUTPUT,
    DetectorParams,
)
from models.base import F32, F64

# Opset 17 / IR 8: every onnxruntime the gateway may carry (>= 1.14) runs it.
OPSET = 17
IR_VERSION = 8
PRODUCER = "edge-agent"


def slope_weights(window: int) -> F64:
    """Least-squares slope weights: `w @ x` is the slope per tick of `x` over `window` ticks."""
    t = np.arange(window, dtype=np.float64)
    t -= t.mean()
    weights: F64 = t / float(np.dot(t, t))
    return weights


def centred_ticks(window: int) -> F64:
    """Tick numbers minus their mean: `slope * centred_ticks` is the window's fitted line."""
    t: F64 = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    return t


def whitening(params: DetectorParams) -> F64:
    """Per-tag `(J, 3, 3)` matrices `A` with `|z @ A|^2 = z^T cov^-1 z / d2_threshold`."""
    k = len(FEATURES)
    out = np.empty((len(params.output_names), k, k), dtype=np.float64)
    for j, cov in enumerate(params.robust_covariance):
        precision = np.linalg.inv(cov)
        precision = 0.5 * (precision + precision.T)
        out[j] = np.linalg.cholesky(precision) / np.sqrt(params.d2_threshold[j])
    return out


def _const(name: str, array: F64 | F32) -> onnx.TensorProto:
    tensor: onnx.TensorProto = numpy_helper.from_array(
        np.ascontiguousarray(array, dtype=np.float32), name
    )
    return tensor


def _axes(name: str, *axes: int) -> onnx.TensorProto:
    tensor: onnx.TensorProto = numpy_helper.from_array(np.array(axes, dtype=np.int64), name)
    return tensor


def build_model(params: DetectorParams) -> bytes:
    """Build, check and serialize the detector for `params` (metadata included)."""
    n_out = len(params.output_names)
    window = params.window
    centre = params.feature_mean + params.feature_std * params.robust_location  # (J, 3)
    whiten = whitening(params)  # (J, 3, 3): [j, k, l]

    initializers = [
        _const("log_std_eps", params.log_std_eps.reshape(1, n_out)),
        _const("slope_weights", slope_weights(window).reshape(1, window)),
        _const("ticks_centred", centred_ticks(window).reshape(window, 1)),
        _const("centre", centre.T),  # (3, J)
        _const("inv_std", (1.0 / params.feature_std).T),  # (3, J)
        _const("whiten", whiten.transpose(1, 2, 0)),  # (3, 3, J): [k, l, j]
        _axes("axis_feature", 1),
        _axes("axis_unsqueeze", 2),
    ]
    node = helper.make_node
    nodes = [
        node("ReduceMean", [INPUT_NAME], ["mean"], axes=[1], keepdims=1, name="window_mean"),
        node("Sub", [INPUT_NAME, "mean"], ["centred"], name="centre_window"),
        node("MatMul", ["slope_weights", "centred"], ["slope"], name="window_slope"),
        node("Mul", ["slope", "ticks_centred"], ["trend"], name="window_trend"),
        node("Sub", ["centred", "trend"], ["detrended"], name="detrend"),
        node("Mul", ["detrended", "detrended"], ["squared"], name="square"),
        node("ReduceMean", ["squared"], ["var"], axes=[1], keepdims=1, name="window_var"),
        node("Sqrt", ["var"], ["std"], name="window_std"),
        node("Add", ["std", "log_std_eps"], ["std_eps"], name="std_floor"),
        node("Log", ["std_eps"], ["log_std"], name="window_log_std"),
        node("Concat", ["mean", "log_std", "slope"], [FEATURES_OUTPUT], axis=1, name="features"),
        node("Sub", [FEATURES_OUTPUT, "centre"], ["offset"], name="offset_from_centre"),
        node("Mul", ["offset", "inv_std"], ["z"], name="standardise"),
        node("Unsqueeze", ["z", "axis_unsqueeze"], ["z4"], name="z_column"),
        node("Mul", ["z4", "whiten"], ["terms"], name="whiten_terms"),
        node("ReduceSum", ["terms", "axis_feature"], ["white"], keepdims=0, name="whiten_sum"),
        node("Mul", ["white", "white"], ["white_sq"], name="white_square"),
        node("ReduceSum", ["white_sq", "axis_feature"], ["d2_rel"], keepdims=0, name="d2"),
        node("Sqrt", ["d2_rel"], [SCORE_OUTPUT], name="score"),
    ]
    graph = helper.make_graph(
        nodes,
        "edge_agent_detector",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", window, n_out])],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["n", n_out]),
            helper.make_tensor_value_info(
                FEATURES_OUTPUT, TensorProto.FLOAT, ["n", len(FEATURES), n_out]
            ),
        ],
        initializer=initializers,
        doc_string=(
            "Per-tag anomaly score of residual windows (measured - predicted); 1.0 = alarm "
            f"threshold. Features per tag: {', '.join(FEATURES)}."
        ),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version=FORMAT_VERSION,
        model_version=int(FORMAT_VERSION),
        doc_string="edge-agent anomaly detector: per-tag Mahalanobis distance of window features",
    )
    helper.set_model_props(model, params.to_metadata())
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString(deterministic=True)
    return data
