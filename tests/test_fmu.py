"""FmuModel against a real FMI 2.0 co-simulation FMU built from `tests/fmu/water_tank.py`.

The FMU is built once per session with pythonfmu into a temporary directory and run through
fmpy in this process (pythonfmu's binary embeds the running interpreter). Broken FMUs are real
files derived from it: a text file, archives with an edited modelDescription.xml or without
the Linux binary.
"""

from __future__ import annotations

import math
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edge_agent.compare import residual_series
from models.base import ModelError, ProcessModel
from models.process.fmu import FmuModel

SOURCE = Path(__file__).parent / "fmu" / "water_tank.py"
AREA = 2.0
COEFF = 0.1
INS = ["inflow", "valve"]
OUTS = ["level", "outflow"]
# RK4 with 10 ms sub-steps on a time constant of 20 s or more: far below this.
TOL_M = 1e-9


def tank_level(h0: float, inflow: float, valve: float, dt: float, area: float = AREA) -> float:
    """Closed-form level after `dt` s with the inputs held (see water_tank.py)."""
    kv = COEFF * valve
    if kv == 0.0:
        return h0 + inflow * dt / area
    h_ss = inflow / kv
    return h_ss + (h0 - h_ss) * math.exp(-kv * dt / area)


@pytest.fixture
def tank(tank_fmu: Path) -> Iterator[FmuModel]:
    """A loaded tank model, closed after the test."""
    with FmuModel.load(tank_fmu, inputs=INS, outputs=OUTS) as model:
        yield model


def _derive(
    src: Path,
    dst: Path,
    *,
    edit_xml: Callable[[str], str] = lambda s: s,
    drop: Callable[[str], bool] = lambda name: False,
    replace: dict[str, bytes] | None = None,
) -> Path:
    """Copy an FMU archive, editing its modelDescription.xml or dropping/replacing entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if drop(item.filename):
                continue
            data = zin.read(item.filename)
            if item.filename == "modelDescription.xml":
                data = edit_xml(data.decode()).encode()
            if replace and item.filename in replace:
                data = replace[item.filename]
            zout.writestr(item, data)
    return dst


def test_outputs_follow_closed_form_solution(tank: FmuModel) -> None:
    """Over 600 steps of varying size and piecewise inputs the level matches the exact solution."""
    schedule = [(0.05, 1.0), (0.2, 0.5), (0.0, 0.8), (0.1, 0.25), (0.02, 1.0), (0.3, 0.7)]
    tank.reset(np.array(schedule[0]), np.array([1.0, np.nan]))
    h = 1.0
    worst = 0.0
    for k in range(600):
        inflow, valve = schedule[k // 100]
        dt = 0.1 if k % 2 else 0.25
        y = tank.step(np.array([inflow, valve]), dt)
        h = tank_level(h, inflow, valve, dt)
        worst = max(worst, abs(y[0] - h), abs(y[1] - COEFF * valve * h))
    assert worst < TOL_M
    assert tank.time == pytest.approx(300 * 0.35)
    assert tank.failures == 0


def test_usable_as_the_digital_original(tank: FmuModel) -> None:
    """The comparator's residual arithmetic over an exact recording gives ~zero residuals."""
    model: ProcessModel = tank
    ts = np.arange(50, dtype=np.float64)
    inputs = np.tile([0.1, 0.6], (50, 1))
    inputs[25:] = [0.02, 1.0]
    levels = [1.3]
    for k in range(1, 50):
        levels.append(tank_level(levels[-1], inputs[k - 1, 0], inputs[k - 1, 1], 1.0))
    outputs = np.column_stack([levels, np.full(50, np.nan)])
    res = residual_series(model, ts, inputs, outputs)
    assert np.abs(res[:, 0]).max() < TOL_M
    assert np.isnan(res[:, 1]).all()


def test_reset_restarts_from_measured_outputs(tank: FmuModel) -> None:
    """Reset puts the measured level into `level_start`, restarts time and the trajectory."""
    u = np.array([0.05, 1.0])
    for _ in range(20):
        tank.step(u, 0.5)
    assert tank.start_rules == {"level": "level_start", "outflow": "none"}
    tank.reset(u, np.array([2.0, np.nan]))
    assert tank.time == 0.0
    np.testing.assert_allclose(tank.step(u, 0.0), [2.0, 0.2])
    y = tank.step(u, 3.0)
    assert y[0] == pytest.approx(tank_level(2.0, 0.05, 1.0, 3.0), abs=TOL_M)


def test_reset_without_measurement_uses_start_values(tank_fmu: Path) -> None:
    """With the level unknown, reset starts from the load-time start values, re-applied."""
    u = np.array([0.0, 1.0])
    starts = {"level_start": 1.5, "area": 4.0}
    with FmuModel.load(tank_fmu, inputs=INS, outputs=OUTS, start_values=starts) as model:
        model.step(u, 10.0)
        model.reset(u, np.array([np.nan, np.nan]))
        assert model.step(u, 0.0)[0] == pytest.approx(1.5)
        y = model.step(u, 5.0)
        assert y[0] == pytest.approx(tank_level(1.5, 0.0, 1.0, 5.0, area=4.0), abs=TOL_M)
        model.reset(u, np.array([0.7, np.nan]))  # a measurement beats the start value
        assert model.step(u, 0.0)[0] == pytest.approx(0.7)


def test_failing_step_gives_nan_and_recovers(tank: FmuModel) -> None:
    """An overflowing tank makes do_step fail: NaN outputs, a count, then a re-initialised run."""
    fill = np.array([1.0, 0.0])  # 0.5 m/s into a closed tank; it overflows above 3 m
    tank.reset(fill, np.array([1.2, np.nan]))
    with capture_logs() as logs:
        levels = [tank.step(fill, 1.0)[0] for _ in range(3)]
        failed = tank.step(fill, 1.0)
        assert np.isnan(failed).all()
        assert tank.failures == 1
        drain = np.array([0.0, 1.0])
        y = tank.step(drain, 1.0)
    np.testing.assert_allclose(levels, [1.7, 2.2, 2.7], atol=TOL_M)
    assert tank.recoveries == 1
    # Restarted from the last good prediction (2.7 m) and drained for one second.
    assert y[0] == pytest.approx(tank_level(2.7, 0.0, 1.0, 1.0), abs=TOL_M)
    events = {(e["event"], e.get("text")) for e in logs}
    assert ("fmu message", "tank overflowed") in events
    assert ("fmu step failed", None) in events and ("fmu recovered", None) in events


def test_persistent_failure_counts_every_step(tank: FmuModel) -> None:
    """A non-finite input fails each step; the agent gets NaN every time, never an exception."""
    bad = np.array([np.nan, 1.0])
    outs = [tank.step(bad, 0.5) for _ in range(3)]
    assert all(np.isnan(o).all() for o in outs)
    assert tank.failures == 3
    assert np.isfinite(tank.step(np.array([0.05, 1.0]), 0.5)).all()


def test_wrong_input_shape_is_a_model_error(tank: FmuModel) -> None:
    """Shapes are checked before the FMU is touched."""
    with pytest.raises(ModelError, match="inputs: expected shape"):
        tank.step(np.array([0.05]), 0.1)
    with pytest.raises(ModelError, match="outputs: expected shape"):
        tank.reset(np.array([0.05, 1.0]), np.array([1.0]))


def test_instances_are_independent(tank_fmu: Path) -> None:
    """Two models of one FMU keep separate states (each has its own extracted copy)."""
    with (
        FmuModel.load(tank_fmu, inputs=INS, outputs=OUTS) as a,
        FmuModel.load(tank_fmu, inputs=INS, outputs=OUTS) as b,
    ):
        ya = a.step(np.array([0.0, 1.0]), 5.0)
        yb = b.step(np.array([0.3, 1.0]), 5.0)
        assert ya[0] == pytest.approx(tank_level(1.0, 0.0, 1.0, 5.0), abs=TOL_M)
        assert yb[0] == pytest.approx(tank_level(1.0, 0.3, 1.0, 5.0), abs=TOL_M)


async def test_close_frees_instance_and_files(tank_fmu: Path) -> None:
    """aclose (and a second close) free the instance and files; a closed model refuses to step."""
    model = FmuModel.load(tank_fmu)
    assert model.input_names == ("inflow", "valve")
    assert model.output_names == ("level", "outflow")  # the Integer output is left out
    extracted = model.extracted_dir
    assert (extracted / "modelDescription.xml").is_file()
    await model.aclose()
    model.close()
    assert not extracted.exists()
    with pytest.raises(ModelError, match="closed"):
        model.step(np.array([0.05, 1.0]), 0.1)


def _text_file(src: Path, d: Path) -> Path:
    p = d / "notes.fmu"
    p.write_text("this is not an FMU\n")
    return p


BAD_FILES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "text file": (_text_file, "not an FMU"),
    "no description": (
        lambda s, d: _derive(s, d / "x.fmu", drop=lambda n: n == "modelDescription.xml"),
        "modelDescription.xml missing",
    ),
    "fmi 1.0": (
        lambda s, d: _derive(
            s, d / "x.fmu", edit_xml=lambda x: x.replace('fmiVersion="2.0"', 'fmiVersion="1.0"')
        ),
        "fmiVersion: 1.0 is not supported",
    ),
    "fmi 3.0": (
        lambda s, d: _derive(
            s, d / "x.fmu", edit_xml=lambda x: x.replace('fmiVersion="2.0"', 'fmiVersion="3.0"')
        ),
        "fmiVersion: 3.0 is not supported",
    ),
    "model exchange only": (
        lambda s, d: _derive(
            s,
            d / "x.fmu",
            edit_xml=lambda x: re.sub(
                r"<CoSimulation [^>]*/>", '<ModelExchange modelIdentifier="WaterTank"/>', x
            ),
        ),
        "CoSimulation: missing",
    ),
    "no linux binary": (
        lambda s, d: _derive(s, d / "x.fmu", drop=lambda n: n.startswith("binaries/linux64/")),
        "binaries/linux64: missing",
    ),
    "corrupt binary": (
        lambda s, d: _derive(
            s, d / "x.fmu", replace={"binaries/linux64/WaterTank.so": b"\x7fELF garbage"}
        ),
        "cannot instantiate",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_rejected(case: str, tank_fmu: Path, tmp_path: Path) -> None:
    """Each broken file gives a ModelError naming the file and the problem."""
    make, message = BAD_FILES[case]
    path = make(tank_fmu, tmp_path)
    cwd = Path.cwd()
    with pytest.raises(ModelError, match=message) as info:
        FmuModel.load(path)
    assert str(path) in str(info.value)
    assert Path.cwd() == cwd  # a failed load leaves the working directory alone


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outputs": ["pressure"]}, "variable 'pressure': not in the FMU"),
        ({"outputs": ["inflow"]}, "'inflow': causality is input, expected output"),
        ({"inputs": ["level"]}, "'level': causality is output, expected input"),
        ({"outputs": ["substeps"]}, "'substeps': type Integer is not supported"),
        ({"outputs": ["level", "level"]}, "duplicate names"),
        ({"start_values": {"volume": 1.0}}, r"start_values\.volume: not a variable"),
        ({"start_values": {"level": 1.0}}, r"start_values\.level: the FMU does not allow"),
        ({"start_values": {"area": math.nan}}, r"start_values\.area: nan is not finite"),
    ],
)
def test_bad_variables_are_rejected(
    kwargs: dict[str, object], message: str, tank_fmu: Path
) -> None:
    """Unknown variables, wrong causality, non-Real types and bad start values are load errors."""
    with pytest.raises(ModelError, match=message) as info:
        FmuModel.load(tank_fmu, **kwargs)  # type: ignore[arg-type]  # cases by keyword
    assert str(tank_fmu) in str(info.value)


@pytest.mark.bench
def test_bench_step_overhead(tank: FmuModel) -> None:
    """Per-step cost of FmuModel.step next to fmpy's plain API on the same instance."""
    u = np.array([0.05, 1.0])
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        y = tank.step(u, 0.001)
    ours = (time.perf_counter() - t0) / n * 1e6
    fmu = tank._fmu  # the raw fmpy slave, for the baseline only
    t = tank.time
    t0 = time.perf_counter()
    for _ in range(n):
        fmu.setReal([0, 1], [0.05, 1.0])
        fmu.doStep(t, 0.001)
        t += 0.001
        fmu.getReal([6, 7])
    plain = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        fmu.fmi2DoStep(fmu.component, t, 0.001, 1)
        t += 0.001
    do_step = (time.perf_counter() - t0) / n * 1e6
    print(
        f"\nFmuModel.step {ours:.2f} us, fmpy API {plain:.2f} us "
        f"(ratio {ours / plain:.2f}), doStep alone {do_step:.2f} us"
    )
    assert np.isfinite(y).all()
