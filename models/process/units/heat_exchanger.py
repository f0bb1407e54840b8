"""A lumped two-node heat exchanger: one well-mixed node per side, coupled through UA.

States: the hot and the cold node temperatures (degC), which are the outlet temperatures
(well-mixed nodes). Inputs: hot and cold inlet temperatures (degC) and flows (l/min, negative
read as zero). With C = flow / 60 * cp_v the capacity rate of a stream (W/K):

    hot node   M_h dT_h/dt = C_h (T_hot_in - T_h) - UA (T_h - T_c)
    cold node  M_c dT_c/dt = C_c (T_cold_in - T_c) + UA (T_h - T_c)
    duty       Q = UA (T_h - T_c) / 1000   (kW, from hot to cold)

Parameters are read as p[NAME] with the index constants below; values, units and ranges are
in heat_exchanger.toml. No `initial` rule: the engine copies measured outlet temperatures onto
the same-named states and solves for the steady state of the others.
"""

from __future__ import annotations

from models.base import F64

STATES = ("t_hot_out", "t_cold_out")
INPUTS = ("t_hot_in", "t_cold_in", "flow_hot", "flow_cold")
OUTPUTS = ("t_hot_out", "t_cold_out", "duty_kw")
PARAMS = (
    "ua_w_per_k",
    "hot_mass_j_per_k",
    "cold_mass_j_per_k",
    "hot_cp_j_per_l_k",
    "cold_cp_j_per_l_k",
)
UA = PARAMS.index("ua_w_per_k")
M_HOT = PARAMS.index("hot_mass_j_per_k")
M_COLD = PARAMS.index("cold_mass_j_per_k")
CP_HOT = PARAMS.index("hot_cp_j_per_l_k")
CP_COLD = PARAMS.index("cold_cp_j_per_l_k")


def derivative(x: F64, u: F64, p: F64, dx: F64) -> None:
    c_hot = max(u[2], 0.0) / 60.0 * p[CP_HOT]
    c_cold = max(u[3], 0.0) / 60.0 * p[CP_COLD]
    q = p[UA] * (x[0] - x[1])
    dx[0] = (c_hot * (u[0] - x[0]) - q) / p[M_HOT]
    dx[1] = (c_cold * (u[1] - x[1]) + q) / p[M_COLD]


def output(x: F64, u: F64, p: F64, y: F64) -> None:
    y[0] = x[0]
    y[1] = x[1]
    y[2] = p[UA] * (x[0] - x[1]) / 1000.0
