"""A NumPy-vectorised water-loop Digital Original: the baseline for the numba kernels.

Owns nothing the product runs: it re-implements, over N parameter variants at once, the same
equations as the authored water loop (`models.process.units.water_loop`: `derivative`,
`output`) with the sub-stepping rule of the former hand-written kernel (RK4 sub-steps no longer
than the substep nor the flow time constant), so the benchmark compares implementations of one
model. Arrays are laid out state-major, `x` of shape (4, N), so each state is one contiguous
row. Terms that depend only on the inputs and the parameters (held constant over a step) are
computed once per step, as a NumPy author would; per-variant sub-step counts are honoured by
masking variants that have finished, which costs nothing when all counts agree.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from models.process.kernels import MAX_SUBSTEPS
from models.process.units.water_loop import PARAMS, VALVE_MIN

# Column of each parameter in the (N, P) matrix: the model file's PARAMS order, as the engine's.
P_INDEX: dict[str, int] = {name: i for i, name in enumerate(PARAMS)}

F64 = npt.NDArray[np.float64]
G = 9.81


class NumpyLoop:
    """N variants of the water loop; `params` has shape (N, P) in `PARAMS` order."""

    def __init__(self, params: F64, substep_s: float) -> None:
        p = np.asarray(params, dtype=np.float64)
        col = {name: np.ascontiguousarray(p[:, i]) for name, i in P_INDEX.items()}
        self.n = p.shape[0]
        self.substep = substep_s
        self.h0 = col["head_shutoff_m"]
        self.kq = col["pump_head_coeff_m_per_lpm2"]
        self.kpipe = col["pipe_coeff_m_per_lpm2"]
        self.kv = col["valve_coeff_m_per_lpm2"]
        self.inertance = col["inertance_m_s_per_lpm"]
        self.eta = col["pump_efficiency_frac"]
        self.pmech = col["mech_loss_w"]
        self.piron = col["iron_loss_w"]
        self.rw = col["winding_resistance_ohm"]
        self.vpf = col["supply_voltage_v"] * col["power_factor"]
        self.area = col["tank_area_m2"]
        self.vpipe = col["pipe_volume_m3"]
        self.ua = col["heat_loss_w_per_k"]
        self.tamb = col["ambient_temp_c"]
        self.cm = col["motor_heat_capacity_j_per_k"]
        self.rth = col["motor_thermal_resistance_k_per_w"]
        self.rho = col["density_kg_per_m3"]
        self.rho_cp = self.rho * col["specific_heat_j_per_kg_k"]
        self.rho_g = self.rho * G

    def _held(self, u: F64) -> dict[str, F64 | float]:
        """Terms fixed over one step: they depend on the inputs and parameters only."""
        s = min(max(u[0] / 100.0, 0.0), 1.0)
        vin = min(max(u[1] / 100.0, VALVE_MIN), 1.0)
        vout = min(max(u[2] / 100.0, VALVE_MIN), 1.0)
        return {
            "s": s,
            "heater_w": max(u[3], 0.0) * 1000.0,
            "h0s2": self.h0 * (s * s),
            "ksys": self.kpipe + self.kv / (vin * vin) + self.kv / (vout * vout),
            "pmech_s2": self.pmech * (s * s),
            "piron_s": self.piron * s,
        }

    def _electric(self, q: F64, head: F64, held: dict[str, F64 | float]) -> tuple[F64, F64]:
        """(shaft power W, current A) per variant."""
        p_hyd = self.rho_g * (np.maximum(q, 0.0) / 60000.0) * np.maximum(head, 0.0)
        p_shaft = p_hyd / self.eta + held["pmech_s2"]
        p_fixed = p_shaft + held["piron_s"]
        disc = self.vpf * self.vpf - 4.0 * self.rw * p_fixed
        root = (self.vpf - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * self.rw)
        current = np.where(disc > 0.0, root, self.vpf / (2.0 * self.rw))
        return p_shaft, current

    def deriv(self, x: F64, held: dict[str, F64 | float]) -> F64:
        """dx/dt, shape (4, N)."""
        q = x[0]
        qq = q * np.abs(q)
        head = held["h0s2"] - self.kq * qq
        dx = np.empty_like(x)
        dx[0] = (head - qq * held["ksys"]) / self.inertance
        dx[1] = 0.0
        p_shaft, current = self._electric(q, head, held)
        cf = self.rho_cp * (self.area * np.maximum(x[1], 0.0) + self.vpipe)
        dx[2] = (held["heater_w"] + p_shaft - self.ua * (x[2] - self.tamb)) / cf
        loss = self.rw * current * current + held["piron_s"]
        dx[3] = (loss - (x[3] - self.tamb) / self.rth) / self.cm
        return dx

    def outputs(self, x: F64, held: dict[str, F64 | float]) -> F64:
        """Predicted outputs, shape (6, N), in `water_loop.OUTPUTS` order."""
        q = x[0]
        head = held["h0s2"] - self.kq * q * np.abs(q)
        _p_shaft, current = self._electric(q, head, held)
        y = np.empty((6, self.n))
        y[0] = q
        y[1] = self.rho_g * (x[1] + head) / 1e5
        y[2] = x[1]
        y[3] = x[2]
        y[4] = current
        y[5] = x[3]
        return y

    def advance(self, x: F64, u: F64, dt: float) -> F64:
        """Integrate `x` (4, N) in place over `dt`; return the outputs after the step (6, N)."""
        held = self._held(u)
        k_tot = self.kq + held["ksys"]
        q_ss = np.sqrt(held["h0s2"] / k_tot)
        tau = self.inertance / (2.0 * k_tot * np.maximum(np.abs(x[0]), q_ss) + 1e-12)
        h = np.minimum(self.substep, tau)
        if dt > 0.0:
            n = np.minimum(np.maximum(np.ceil(dt / h), 0.0), MAX_SUBSTEPS)
        else:
            n = np.zeros(self.n)
        n_max = int(n.max()) if self.n else 0
        if n_max > 0:
            h = np.where(n > 0, dt / np.maximum(n, 1.0), 0.0)
            uniform = bool(n.min() == n_max)
            for k in range(n_max):
                # A variant whose sub-steps are done gets h = 0: its state stays exactly put.
                hk = h if uniform else np.where(k < n, h, 0.0)
                k1 = self.deriv(x, held)
                k2 = self.deriv(x + 0.5 * hk * k1, held)
                k3 = self.deriv(x + 0.5 * hk * k2, held)
                k4 = self.deriv(x + hk * k3, held)
                x += hk / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return self.outputs(x, held)

    def substeps(self, x: F64, u: F64, dt: float) -> F64:
        """The RK4 sub-step count each variant would take from state `x` (for the report)."""
        held = self._held(u)
        k_tot = self.kq + held["ksys"]
        q_ss = np.sqrt(held["h0s2"] / k_tot)
        tau = self.inertance / (2.0 * k_tot * np.maximum(np.abs(x[0]), q_ss) + 1e-12)
        h = np.minimum(self.substep, tau)
        out: F64 = np.array([math.ceil(dt / hi) for hi in h], dtype=np.float64)
        return out
