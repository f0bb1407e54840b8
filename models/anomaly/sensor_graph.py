"""Builds the sensor-window detector's ONNX graph from `SensorParams` (features included).

Input `window` `(n, W, C)` float32; outputs `score` `(n,)` and `contributions` `(n, K)`. The
graph computes every input's window mean and least-squares slope per row (one ReduceMean, one
MatMul with fixed weights) and, when a feature asks for it, the log standard deviation about the
fitted line (eight more elementwise nodes), gathers the K features the metadata lists,
normalises them and evaluates the quadratic form with the threshold folded into the precision
matrix:

    z = (f - centre) / scale - location,  c = z * (z @ P / d2_threshold),  score = sqrt(sum c)

or, for `distance = "max"`, with the spread and the threshold folded into one weight vector,

    a = z / (sd * sqrt(d2_threshold)),  c = a * a,  score = sqrt(max c)

Twelve or thirteen nodes, no loops or trees, so one window costs a few microseconds. This
module imports `onnx` (an engineering-station dependency); the runtime lives in
`models.anomaly.sensor`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.anomaly.graph import IR_VERSION, OPSET, PRODUCER, centred_ticks, slope_weights
from models.anomaly.sensor import (
    CONTRIBUTIONS,
    INPUT,
    LOGSTD_EPS,
    SCORE,
    SENSOR_FORMAT,
    STATS,
    SensorParams,
)
from models.base import F64


def _const(name: str, array: F64) -> onnx.TensorProto:
    tensor: onnx.TensorProto = numpy_helper.from_array(
        np.ascontiguousarray(array, dtype=np.float32), name
    )
    return tensor


def build_sensor_model(params: SensorParams) -> bytes:
    """Build, check and serialize the detector for `params`, metadata included."""
    window, n_in, k = params.window, len(params.input_names), len(params.features)
    # Flattened (stat, input) index of each feature in the concatenated [means, slopes, ...].
    index = params.feature_index()
    gather = np.array([s * n_in + i for s, i in index], dtype=np.int64)
    n_stats = 3 if any(s == STATS.index("logstd") for s, _ in index) else 2
    precision = 0.5 * (params.precision + params.precision.T) / params.d2_threshold
    weight = 1.0 / (params.spread() * np.sqrt(params.d2_threshold))
    initializers = [
        _const("slope_weights", slope_weights(window).reshape(1, window)),
        numpy_helper.from_array(np.array([-1, n_stats * n_in], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(gather, "feature_index"),
        _const("centre", params.centre.reshape(1, k)),
        _const("inv_scale", (1.0 / params.scale).reshape(1, k)),
        _const("location", params.location.reshape(1, k)),
    ]
    if params.distance == "max":
        initializers.append(_const("weight", weight.reshape(1, k)))
    else:
        initializers += [
            _const("precision", precision),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "feature_axis"),
        ]
    node = helper.make_node
    nodes = [
        node("ReduceMean", [INPUT], ["mean"], axes=[1], keepdims=1, name="window_mean"),
        node("MatMul", ["slope_weights", INPUT], ["slope"], name="window_slope"),
    ]
    stats = ["mean", "slope"]
    if n_stats == 3:  # log standard deviation about the window's fitted line
        initializers += [
            _const("ticks", centred_ticks(window).reshape(window, 1)),
            _const("var_eps", np.array([LOGSTD_EPS])),
            _const("half", np.array([0.5])),
        ]
        nodes += [
            node("Mul", ["slope", "ticks"], ["trend"], name="trend"),
            node("Add", ["mean", "trend"], ["line"], name="fitted_line"),
            node("Sub", [INPUT, "line"], ["detrended"], name="detrended"),
            node("Mul", ["detrended", "detrended"], ["squares"], name="squares"),
            node("ReduceMean", ["squares"], ["var"], axes=[1], keepdims=1, name="window_var"),
            node("Add", ["var", "var_eps"], ["var_floor"], name="var_floor"),
            node("Log", ["var_floor"], ["log_var"], name="log_var"),
            node("Mul", ["log_var", "half"], ["logstd"], name="window_logstd"),
        ]
        stats.append("logstd")
    nodes += [
        node("Concat", stats, ["stats"], axis=1, name="stats"),
        node("Reshape", ["stats", "flat_shape"], ["flat"], name="flatten"),
        node("Gather", ["flat", "feature_index"], ["features"], axis=1, name="features"),
        node("Sub", ["features", "centre"], ["offset"], name="centre_features"),
        node("Mul", ["offset", "inv_scale"], ["scaled"], name="scale_features"),
        node("Sub", ["scaled", "location"], ["z"], name="from_location"),
    ]
    if params.distance == "max":
        nodes += [
            node("Mul", ["z", "weight"], ["a"], name="standardise"),
            node("Mul", ["a", "a"], [CONTRIBUTIONS], name="contributions"),
            node("ReduceMax", [CONTRIBUTIONS], ["d2"], axes=[1], keepdims=0, name="d2"),
            node("Sqrt", ["d2"], [SCORE], name="score"),
        ]
    else:
        nodes += [
            node("MatMul", ["z", "precision"], ["pz"], name="precision_product"),
            node("Mul", ["z", "pz"], [CONTRIBUTIONS], name="contributions"),
            node("ReduceSum", [CONTRIBUTIONS, "feature_axis"], ["d2"], keepdims=0, name="d2"),
            node("Relu", ["d2"], ["d2_pos"], name="round_off_floor"),
            node("Sqrt", ["d2_pos"], [SCORE], name="score"),
        ]
    graph = helper.make_graph(
        nodes,
        "edge_agent_sensor_detector",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["n", window, n_in])],
        [
            helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info(CONTRIBUTIONS, TensorProto.FLOAT, ["n", k]),
        ],
        initializer=initializers,
        doc_string=(
            f"Anomaly score of a window of {n_in} signals ({', '.join(params.input_names)}); "
            f"1.0 = threshold. Features: {', '.join(params.features)}."
        ),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version=SENSOR_FORMAT,
        model_version=int(SENSOR_FORMAT),
        doc_string=(
            f"edge-agent sensor-window detector: {params.distance} distance of window features"
        ),
    )
    helper.set_model_props(model, params.to_metadata())
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString(deterministic=True)
    return data
