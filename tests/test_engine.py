"""The Digital Original engine: authored models, ensemble integration, validation, caching."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from edge_agent.compare import residual_series
from models.base import F64, ModelError, ProcessModel
from models.process.engine import Ensemble, SpecModel, sample_params
from models.process.spec import ModelSpec, load_spec, python_functions
from models.process.units import UNITS_DIR

REPO = Path(__file__).resolve().parents[1]
LOOP = load_spec(UNITS_DIR / "water_loop.toml")
HX = load_spec(UNITS_DIR / "heat_exchanger.toml")


def _loop_inputs(rng: np.random.Generator) -> F64:
    return np.array(
        [rng.uniform(30, 100), rng.uniform(20, 100), rng.uniform(20, 100), rng.uniform(0, 3)]
    )


def _hx_inputs(rng: np.random.Generator) -> F64:
    return np.array(
        [rng.uniform(60, 90), rng.uniform(5, 25), rng.uniform(5, 40), rng.uniform(5, 40)]
    )


def _reference(spec: ModelSpec, x0: F64, us: list[F64], dt: float) -> F64:
    """solve_ivp (rtol 1e-10, atol 1e-12) on the model's Python derivative, inputs held per step."""
    deriv = python_functions(spec)["derivative"]
    p = spec.nominal
    x = x0.copy()
    out = []
    for u in us:

        def f(_t: float, xv: F64, u: F64 = u) -> F64:
            dx = np.empty_like(xv)
            deriv(xv, u, p, dx)
            return dx

        sol = solve_ivp(f, (0.0, dt), x, method="DOP853", rtol=1e-10, atol=1e-12)
        x = sol.y[:, -1]
        out.append(x)
    return np.array(out)


def _engine_run(spec: ModelSpec, x0: F64, us: list[F64], dt: float) -> F64:
    ens = Ensemble(spec)
    ens.set_states(x0)
    out = []
    for u in us:
        ens.step(u, dt)
        out.append(ens.states[0])
    return np.array(out)


@pytest.mark.parametrize(
    ("spec", "make_inputs", "dt", "bound"),
    [
        # RK4 at <= 0.05 s against a 0.5 s flow time constant, inputs jumping every second
        # (measured 1.0e-6, from the flow transients).
        (LOOP, _loop_inputs, 1.0, 3e-6),
        # RK4 at <= 0.1 s against node time constants of ~5-10 s.
        (HX, _hx_inputs, 2.0, 1e-8),
    ],
    ids=["water_loop_rk4_substep", "heat_exchanger_rk4"],
)
def test_integration_matches_solve_ivp(
    spec: ModelSpec, make_inputs: object, dt: float, bound: float
) -> None:
    """Fixed-step RK4 stays within the stated relative error of a tight solve_ivp solution."""
    rng = np.random.default_rng(3)
    us = [make_inputs(rng) for _ in range(30)]  # type: ignore[operator]  # a parametrized function
    x0 = spec.nominal_states.copy()
    ref = _reference(spec, x0, us, dt)
    got = _engine_run(spec, x0, us, dt)
    rel = np.max(np.abs(got - ref) / (1.0 + np.abs(ref)))
    assert rel < bound


def test_semi_implicit_is_second_order_and_stable(tmp_path: Path) -> None:
    """ROS2 converges at second order against solve_ivp and stays bounded with huge sub-steps."""
    # The shipped model file, by absolute path: its compiled code is shared with the unit's.
    text = (
        (UNITS_DIR / "heat_exchanger.toml")
        .read_text()
        .replace('"heat_exchanger.py"', repr(str(UNITS_DIR / "heat_exchanger.py")))
    )
    rng = np.random.default_rng(5)
    us = [_hx_inputs(rng) for _ in range(10)]
    errors = []
    for sub in (0.1, 0.05):
        toml = tmp_path / f"hx_{int(sub * 100)}.toml"
        toml.write_text(
            text.replace('integrator = "rk4"', 'integrator = "semi-implicit"').replace(
                "substep_s = 0.1", f"substep_s = {sub}"
            )
        )
        spec = load_spec(toml)
        ref = _reference(spec, spec.nominal_states, us, 2.0)
        got = _engine_run(spec, spec.nominal_states, us, 2.0)
        errors.append(float(np.max(np.abs(got - ref))))
    assert errors[1] < 1e-3  # degC, with 0.05 s sub-steps (measured 4e-4)
    assert 3.0 < errors[0] / errors[1] < 5.0  # halving h quarters the error
    # A 10 s sub-step on nodes with ~1 s time constants: explicit RK4 would blow up.
    stiff = toml.read_text().replace("substep_s = 0.05", "substep_s = 10.0")
    stiff = stiff.replace("nominal = 20000.0", "nominal = 2000.0")
    toml.write_text(stiff)
    ens = Ensemble(load_spec(toml))
    for _ in range(20):
        y = ens.step(np.array([80.0, 15.0, 40.0, 40.0]), 10.0)
    assert np.all((y[0, :2] > 15.0) & (y[0, :2] < 80.0))


def test_ensemble_equals_separate_runs() -> None:
    """N variants stepped together equal N single-variant runs, through reset, step and observe."""
    params = sample_params(LOOP, 6, seed=11, spread=0.3)
    ens = Ensemble(LOOP, params)
    singles = [SpecModel(LOOP, row) for row in params]
    rng = np.random.default_rng(2)
    u = _loop_inputs(rng)
    y0 = np.array([np.nan, np.nan, 0.8, 30.0, np.nan, np.nan])
    ens.reset(u, y0)
    for m in singles:
        m.reset(u, y0)
    for k in range(100):
        u = _loop_inputs(rng) if k % 10 == 0 else u
        got = ens.step(u, 0.5)
        want = np.array([m.step(u, 0.5) for m in singles])
        assert np.array_equal(got, want)
        meas = want[0] + 0.5
        ens.observe(meas, 0.5)
        for m in singles:
            m.observe(meas, 0.5)
    assert got.shape == (6, len(LOOP.outputs))
    assert not np.allclose(got[0], got[1])  # the variants really differ


def test_sample_params_inside_ranges_and_latin() -> None:
    """Variant 0 is nominal, all rows lie inside the ranges, Latin rows fill every stratum once."""
    n = 41
    ps = sample_params(HX, n, seed=1, latin=True)
    assert np.array_equal(ps[0], HX.nominal)
    assert np.all((ps >= HX.lo) & (ps <= HX.hi))
    strata = np.floor((ps[1:] - HX.lo) / (HX.hi - HX.lo) * (n - 1)).astype(int)
    for j in range(len(HX.params)):
        assert sorted(strata[:, j]) == list(range(n - 1))
    with pytest.raises(ModelError, match=r"params\[1\]\.ua_w_per_k"):
        Ensemble(HX, np.vstack([HX.nominal, HX.nominal * [100, 1, 1, 1, 1]]))


def test_heat_exchanger_runs_as_process_model() -> None:
    """The exchanger, authored only through the API, runs in the agent's residual arithmetic."""
    model: ProcessModel = SpecModel.load(UNITS_DIR / "heat_exchanger.toml")
    assert model.input_names == ("t_hot_in", "t_cold_in", "flow_hot", "flow_cold")
    u = np.array([85.0, 10.0, 25.0, 35.0])
    model.reset(u, np.full(3, np.nan))
    y = model.step(u, 0.0)
    # Steady state: each stream's enthalpy change equals the duty, outlets between the inlets.
    c_hot, c_cold = 25.0 / 60 * 4186.0, 35.0 / 60 * 4186.0
    assert math.isclose(c_hot * (85.0 - y[0]) / 1000, y[2], rel_tol=1e-9)
    assert math.isclose(c_cold * (y[1] - 10.0) / 1000, y[2], rel_tol=1e-9)
    assert 10.0 < y[1] < y[0] < 85.0
    # A recording produced by the model itself leaves zero residuals.
    ts = np.arange(50, dtype=np.float64)
    inputs = np.tile(u, (50, 1))
    inputs[20:, 2] = 10.0  # hot flow drops: outlets move
    model.reset(u, y)
    outs = [model.step(u, 0.0)]
    for k in range(1, 50):
        outs.append(model.step(inputs[k - 1], 1.0))
    res = residual_series(model, ts, inputs, np.array(outs))
    assert np.max(np.abs(res)) < 1e-9
    assert outs[-1][0] < outs[19][0] - 1.0


def test_reset_pins_measured_states_and_settles_the_rest() -> None:
    """Without an `initial` rule, reset copies same-named outputs and settles the other states."""
    ens = Ensemble(HX, sample_params(HX, 3, seed=4))
    u = np.array([70.0, 20.0, 15.0, 30.0])
    ens.reset(u, np.array([55.0, np.nan, 999.0]))
    x = ens.states
    assert np.all(x[:, 0] == 55.0)
    deriv = python_functions(HX)["derivative"]
    for v in range(3):
        dx = np.empty(2)
        deriv(x[v], u, ens.params[v], dx)
        assert abs(dx[1]) < 1e-9  # the cold node is at its steady state for T_hot = 55
    before = ens.outputs
    assert np.array_equal(ens.step(u, 0.0), before)  # dt <= 0 returns the current outputs
    assert np.array_equal(ens.step(u, -1.0), before)


def _write_model(tmp_path: Path, py: str, toml_extra: str = "", params: str = "") -> Path:
    (tmp_path / "m.py").write_text(textwrap.dedent(py))
    toml = tmp_path / "m.toml"
    toml.write_text(
        textwrap.dedent(
            """\
            [model]
            name = "bad_model"
            file = "m.py"
            """
        )
        + toml_extra
        + "\n[params]\n"
        + (params or 'k = { nominal = 1.0, unit = "1/s", range = [0.5, 2.0] }\n')
    )
    return toml


GOOD_PY = """\
STATES = ("a", "b")
INPUTS = ("u",)
OUTPUTS = ("a",)
PARAMS = ("k",)

def derivative(x, u, p, dx):
    dx[0] = -p[0] * x[0] + u[0]
    dx[1] = x[0] - x[1]

def output(x, u, p, y):
    y[0] = x[0]
"""


@pytest.mark.parametrize(
    ("py", "toml_extra", "params", "field"),
    [
        (GOOD_PY.replace("dx[1] = x[0]", "dx[2] = x[0]"), "", "", r"derivative: writes or reads"),
        (GOOD_PY.replace("    dx[1] = x[0] - x[1]\n", ""), "", "", r"derivative: dx\[b\]"),
        (GOOD_PY.replace("y[0] = x[0]", "y[1] = x[0]"), "", "", r"output: writes or reads"),
        (
            GOOD_PY.replace("+ u[0]", "+ math.nan").replace("STATES", "import math\nSTATES", 1),
            "",
            "",
            r"derivative: dx\[a\] is NaN",
        ),
        (GOOD_PY.split("def output", maxsplit=1)[0], "", "", r"output: missing function"),
        (GOOD_PY.replace('STATES = ("a", "b")', 'STATES = ("a", "a")'), "", "", r"STATES\.a: dup"),
        (GOOD_PY, "colour = 1\n", "", r"model\.colour: unknown key"),
        (GOOD_PY, "[extra]\n", "", r"extra: unknown table"),
        (GOOD_PY, "[observer]\nb = 5.0\n", "", r"observer\.b: the state has no output"),
        (GOOD_PY, "", "k = { nominal = 3.0, range = [0.5, 2.0] }\n", r"params\.k\.nominal: 3"),
        (GOOD_PY, "", "k = { nominal = 1.0, range = [2.0, 0.5] }\n", r"params\.k\.range: lo"),
        (
            GOOD_PY,
            "",
            'k = { nominal = 1.0, range = [0.5, 2.0], colour = "red" }\n',
            r"params\.k\.colour: unknown key",
        ),
        (
            GOOD_PY,
            "",
            "k = { nominal = 1.0, range = [0.5, 2.0] }\nj = { nominal = 1, range = [0, 2] }\n",
            r"params\.j: unknown parameter",
        ),
        (GOOD_PY.replace("STATES = (", "STATEZ = ("), "", "", r"STATES: missing"),
        (
            GOOD_PY.replace("-p[0] * x[0]", "-p[0] * x[0] * len({'a': [1]}['a'][0:1] + ['x'])"),
            "",
            "",
            r"derivative: numba cannot compile it: .*\(at m\.py:7\)",
        ),
    ],
    ids=[
        "derivative_out_of_range",
        "derivative_unwritten",
        "output_out_of_range",
        "derivative_nan",
        "missing_output",
        "duplicate_state",
        "unknown_model_key",
        "unknown_table",
        "observer_without_output",
        "nominal_outside_range",
        "range_lo_above_hi",
        "unknown_param_key",
        "param_not_in_model_file",
        "missing_states",
        "not_compilable",
    ],
)
def test_invalid_definitions_rejected(
    tmp_path: Path, py: str, toml_extra: str, params: str, field: str
) -> None:
    """Each broken definition raises ModelError naming the model and the offending field."""
    toml = _write_model(tmp_path, py, toml_extra, params)
    with pytest.raises(ModelError, match=r"^model bad_model \(.*m\.toml\): " + field):
        load_spec(toml)


@pytest.fixture(scope="module")
def minimal_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The minimal valid model in one directory per run, so its compiled cache is shared."""
    return _write_model(tmp_path_factory.mktemp("minimal"), GOOD_PY, "[nominal_inputs]\nu = 2.0\n")


def test_valid_minimal_model_loads(minimal_toml: Path) -> None:
    """The minimal definition the rejection cases start from is itself accepted and runs."""
    model = SpecModel(load_spec(minimal_toml))
    model.reset(np.array([2.0]), np.array([np.nan]))
    assert np.allclose(model.state, [2.0, 2.0])  # steady state of dx = -x + u, dy = x - y


_CACHE_PROBE = """
import sys
from models.process.engine import SpecModel
from models.process.spec import load_spec
m = SpecModel(load_spec(sys.argv[1]))
m.reset([1.0], [0.5])
print(m.step([1.0], 1.0)[0], sum(m.spec.module._advance_all.stats.cache_hits.values()))
"""


def _probe(toml: Path) -> tuple[float, int]:
    """Load and step the model in a fresh process: (output, kernel cache hits)."""
    out = subprocess.run(
        [sys.executable, "-c", _CACHE_PROBE, str(toml)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


def test_compiled_kernel_cached_across_processes_and_never_stale(minimal_toml: Path) -> None:
    """A fresh process loads the kernel from numba's cache; an edited model is recompiled."""
    SpecModel(load_spec(minimal_toml))  # compiled (and cached) in this process at the latest
    first, hits = _probe(minimal_toml)
    assert hits > 0
    assert math.isclose(first, 1.0 + (0.5 - 1.0) * math.exp(-1.0), rel_tol=1e-6)  # x' = -k x + u
    py = minimal_toml.with_name("m.py")
    original = py.read_text()
    py.write_text(original.replace("-p[0] * x[0]", "-2.0 * p[0] * x[0]"))
    try:
        edited, _ = _probe(minimal_toml)
    finally:
        py.write_text(original)
    assert math.isclose(edited, 0.5, rel_tol=1e-6)  # x' = -2 x + 1 from its steady state
