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
            GOOD_PY + "\ndef max_rate(x, u, p):\n    return 0.5 * p[0]\n",
            "",
            "",
            r"max_rate: 0\.5 1/s is below the finite-difference Gershgorin bound 2 1/s",
        ),
        (
            GOOD_PY + "\ndef max_rate(x, u, p):\n    return -1.0\n",
            "",
            "",
            r"max_rate: must return a finite rate >= 0, got -1\.0",
        ),
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
        "max_rate_too_low",
        "max_rate_negative",
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


ARRAY_PY = """\
import numpy as np

STATES = ("a", "b", "c")
INPUTS = ("u",)
OUTPUTS = ("total", "b")
PARAMS = ("k", "c_ab")


def derivative(x, u, p, dx):
    # Array-only code: `.shape` and a NumPy reduction do not exist on tuples.
    n = x.shape[0]
    mean = np.sum(x) / n
    for i in range(n):
        dx[i] = -p[0] * x[i] + p[1] * (mean - x[i])
    dx[0] += u[0]


def output(x, u, p, y):
    y[0] = np.sum(x)
    y[1] = x[1]
"""


def _array_model(tmp_path: Path) -> ModelSpec:
    (tmp_path / "arr.py").write_text(ARRAY_PY)
    toml = tmp_path / "arr.toml"
    toml.write_text(
        '[model]\nname = "array_model"\nfile = "arr.py"\nintegrator = "rk4"\nsubstep_s = 0.05\n'
        "[nominal_inputs]\nu = 1.0\n[nominal_states]\na = 1.0\n"
        "[params]\nk = { nominal = 0.8, range = [0.1, 2.0] }\n"
        "c_ab = { nominal = 3.0, range = [0.0, 10.0] }\n"
    )
    return load_spec(toml)


def test_array_kernel_fallback_matches_solve_ivp(tmp_path: Path) -> None:
    """A model authored through the public API that needs arrays (not tuples) runs on the
    array kernel and matches solve_ivp; its ensemble equals separate runs."""
    spec = _array_model(tmp_path)
    ens = Ensemble(spec)
    assert ens.kernel == "arrays"
    assert Ensemble(LOOP).kernel == "tuples"
    rng = np.random.default_rng(8)
    us = [np.array([rng.uniform(-2.0, 2.0)]) for _ in range(20)]
    x0 = np.array([1.0, 0.0, -0.5])
    ref = _reference(spec, x0, us, 0.7)
    got = _engine_run(spec, x0, us, 0.7)
    rel = np.max(np.abs(got - ref) / (1.0 + np.abs(ref)))
    assert rel < 1e-5  # RK4 at <= 0.05 s against rates up to k + c_ab = 3.8 /s (measured 2.1e-6)
    params = np.array([[0.8, 3.0], [0.3, 1.0], [1.5, 6.0]])
    many = Ensemble(spec, params)
    many.set_states(x0)
    for u in us:
        y = many.step(u, 0.7)
    for v in range(3):
        one = Ensemble(spec, params[v])
        one.set_states(x0)
        for u in us:
            y1 = one.step(u, 0.7)
        assert np.array_equal(y1[0], y[v])


def test_dt_may_change_every_call() -> None:
    """Each step takes its own dt (jitter, late ticks): a run whose dt changes every call
    matches solve_ivp over the same intervals, for both RK4 kernels' models."""
    rng = np.random.default_rng(12)
    for spec, make_inputs, bound in ((LOOP, _loop_inputs, 3e-6), (HX, _hx_inputs, 1e-9)):
        ens = Ensemble(spec)
        x = ref = spec.nominal_states.copy()
        ens.set_states(x)
        u = make_inputs(rng)
        worst = 0.0
        for k in range(40):
            u = make_inputs(rng) if k % 8 == 0 else u
            dt = float(rng.choice([0.02, 0.1, 0.13, 0.5, 1.7]))
            ref = _reference(spec, ref, [u], dt)[-1]
            ens.step(u, dt)
            x = ens.states[0]
            worst = max(worst, float(np.max(np.abs(x - ref) / (1.0 + np.abs(ref)))))
        assert worst < bound  # measured 6.9e-7 (loop), 1.0e-10 (heat exchanger)


def _gershgorin(spec: ModelSpec, x: F64, u: F64, p: F64) -> float:
    """The finite-difference Gershgorin bound of the derivative, as the engine computes it."""
    deriv = python_functions(spec)["derivative"]
    f0 = np.empty_like(x)
    deriv(x, u, p, f0)
    rows = np.zeros(len(x))
    for j in range(len(x)):
        xe = x.copy()
        eps = 1e-7 * max(abs(x[j]), 1.0)
        xe[j] += eps
        fe = np.empty_like(x)
        deriv(xe, u, p, fe)
        rows += np.abs((fe - f0) / eps)
    return float(rows.max())


def test_water_loop_max_rate_bounds_the_jacobian() -> None:
    """The loop's analytic `max_rate` is at least the finite-difference Gershgorin bound it
    replaces, over random states, inputs and parameters within their ranges."""
    rate = python_functions(LOOP)["max_rate"]
    rng = np.random.default_rng(21)
    for ps in sample_params(LOOP, 300, seed=22):
        u = np.array([rng.uniform(0, 100), rng.uniform(0, 100), rng.uniform(0, 100),
                      rng.uniform(0, 5)])  # fmt: skip
        x = np.array([rng.uniform(-10, 120), rng.uniform(0, 1.5), rng.uniform(5, 90),
                      rng.uniform(5, 120)])  # fmt: skip
        assert rate(x, u, ps) >= _gershgorin(LOOP, x, u, ps) * (1 - 1e-6)


def test_a_long_dt_is_sub_stepped_safely(tmp_path: Path) -> None:
    """A 5 s step after a late tick, with a nearly closed valve and a short water column (the
    flow dynamics stiff: rho * substep_s > 2.8, beyond RK4's stability limit), stays stable and
    matches solve_ivp: rk4-substep shortens its sub-steps below 1 / rho. The same step with
    plain "rk4" at the same 0.05 s sub-steps blows up."""
    u = np.array([100.0, 100.0, 5.0, 1.0])  # outlet valve at the 5 % floor
    params = LOOP.nominal.copy()
    params[LOOP.index("inertance_m_s_per_lpm")] = 0.05  # a short, stiff water column
    ens = Ensemble(LOOP, params)
    ens.reset(u, np.full(len(LOOP.outputs), np.nan))
    x0 = ens.states[0].copy()
    x0[0] *= 1.5  # off the steady state: a real transient
    ens.set_states(x0)
    ens.step(u, 5.0)
    deriv = python_functions(LOOP)["derivative"]

    def f(_t: float, xv: F64) -> F64:
        dx = np.empty_like(xv)
        deriv(xv, u, params, dx)
        return dx

    ref = solve_ivp(f, (0.0, 5.0), x0, method="Radau", rtol=1e-10, atol=1e-12).y[:, -1]
    got = ens.states[0]
    assert np.max(np.abs(got - ref) / (1.0 + np.abs(ref))) < 1e-8  # measured 5e-11
    text = (UNITS_DIR / "water_loop.toml").read_text()
    plain = tmp_path / "loop_rk4.toml"
    plain.write_text(
        text.replace('"water_loop.py"', repr(str(UNITS_DIR / "water_loop.py"))).replace(
            'integrator = "rk4-substep"', 'integrator = "rk4"'
        )
    )
    naive = Ensemble(load_spec(plain), params)
    naive.set_states(x0)
    y = naive.step(u, 5.0)
    assert not (np.all(np.isfinite(y)) and abs(y[0, 0] - ref[0]) < 1.0)
    # Without `max_rate` the finite-difference Gershgorin bound does the same job.
    source = (UNITS_DIR / "water_loop.py").read_text()
    (tmp_path / "loop_fd.py").write_text(source[: source.index("\n\ndef max_rate(")] + "\n")
    fd = tmp_path / "loop_fd.toml"
    fd.write_text(text.replace('"water_loop.py"', '"loop_fd.py"'))
    spec_fd = load_spec(fd)
    assert "max_rate" not in python_functions(spec_fd)
    ens_fd = Ensemble(spec_fd, params)
    ens_fd.set_states(x0)
    ens_fd.step(u, 5.0)
    assert np.max(np.abs(ens_fd.states[0] - ref) / (1.0 + np.abs(ref))) < 1e-8
