"""The rig detection benchmark: its smoke run, and its tick path against a real agent.

No timing is asserted (speed is the benchmark's business). The smoke run checks the tables and
the JSON, a row per fault kind, and what a short run must already show: every fault that acts
within a minute is detected, and a minute of normal operation raises no alarm. The cross-check
feeds the same plant samples to the benchmark's stages (`bench.rig_path`) and to an `Agent`
built from the demo config, and requires the same scores and alarm states on every tick.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.rig_path import DEMO_CONFIG, TICK_T0, RigPath, reconnect_after_s
from edge_agent.agent import Agent
from edge_agent.config import load_config
from hil.faults import FAULT_KINDS
from hil.plant import TAG_NAMES, Plant

ROOT = Path(__file__).resolve().parents[1]
FAULT_HEADER = ("fault", "detected", "delay median s", "min s", "max s", "first alarm")
NORMAL_HEADER = ("seed", "ticks", "hours", "false alarms")
SLOW_KINDS = {"pump-ageing"}  # needs minutes of plant time: not within the quick run's minute


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """`python -m bench.rig_detection --quick` run once; its stdout and JSON result."""
    out = tmp_path_factory.mktemp("bench-rig-detection")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rig_detection", "--quick", "--results-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads((out / "rig_detection.json").read_text())


def _cells(line: str) -> tuple[str, ...]:
    return tuple(re.split(r"\s{2,}", line.strip()))


def _table_rows(stdout: str, header: tuple[str, ...]) -> list[str]:
    """The lines of the printed table whose header starts with `header`."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if _cells(ln)[: len(header)] == header)
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.strip():
            break
        rows.append(ln)
    return rows


def test_quick_run_prints_a_row_per_fault_kind(quick: tuple[str, dict[str, Any]]) -> None:
    """The fault table and the JSON have a row for every fault kind the rig can inject."""
    stdout, result = quick
    printed = {_cells(ln)[0] for ln in _table_rows(stdout, FAULT_HEADER)}
    labels = {f["label"] for f in result["faults"]}
    kinds = {f["kind"] for f in result["faults"]}
    assert kinds == set(FAULT_KINDS)
    assert printed == labels
    assert "plc-restart:plc=drive" in labels
    for f in result["faults"]:
        s = f["summary"]
        assert s["runs"] == len(f["runs"]) == 1
        assert f["expected_tags"]
        for run in f["runs"]:
            assert run["detected"] == (run["delay_s"] is not None) == (run["first_tag"] is not None)
            if run["detected"]:
                assert run["delay_s"] >= 0.0
                assert s["delay_min_s"] <= s["delay_median_s"] <= s["delay_max_s"]


def test_quick_run_detects_the_fast_faults(quick: tuple[str, dict[str, Any]]) -> None:
    """Every fault that acts within a minute is detected, on one of the tags it should move,
    and nothing alarmed before the injection."""
    _, result = quick
    for f in result["faults"]:
        if f["kind"] in SLOW_KINDS:
            continue
        run = f["runs"][0]
        assert run["detected"], f["label"]
        assert run["expected_alarmed"], (f["label"], run["alarmed_tags"])
        assert run["alarms_before_injection"] == 0, f["label"]


def test_quick_run_normal_operation_and_json(quick: tuple[str, dict[str, Any]]) -> None:
    """The normal-operation table and JSON: ticks run, no false alarm, finite margins, targets."""
    stdout, result = quick
    assert result["benchmark"] == "rig_detection" and result["quick"] is True
    assert result["machine"]["cores"] >= 1
    rows = _table_rows(stdout, NORMAL_HEADER)
    assert len(rows) == len(result["normal"]) == 1
    normal = result["normal"][0]
    assert normal["ticks"] == 600
    assert normal["false_alarms"] == 0, normal["alarm_tags"]
    tags = set(load_config(DEMO_CONFIG).model.outputs.values())
    assert set(normal["peak_score"]) == set(normal["held_score"]) == tags
    for tag, peak in normal["peak_score"].items():
        assert math.isfinite(peak) and 0.0 <= normal["held_score"][tag] <= peak
    speed = result["speed"]
    assert speed["ticks"] > normal["ticks"] and speed["sim_s"] > 0 and speed["speedup"] > 0
    assert "speed:" in stdout and "x real time" in stdout
    assert {t["what"] for t in result["targets"]} >= {"false alarms in normal operation"}


def test_reconnect_follows_the_acquisition_backoff() -> None:
    """A PLC back after 5 s is found on the connect attempt after it (backoff 0.5, 1, 2, 4 s
    at three quarters), and no outage ends before the PLC is back."""
    assert reconnect_after_s(5.0) == pytest.approx(0.75 * (0.5 + 1 + 2 + 4))
    for down_s in (0.0, 0.3, 2.0, 5.0, 30.0):
        assert reconnect_after_s(down_s) >= down_s


def test_bench_path_and_agent_agree(tmp_path: Path) -> None:
    """The benchmark's stages and a real Agent, fed the same plant samples with a stuck flow
    sensor, give bit-identical scores and the same alarm states on every tick."""
    # The demo config as it is, one folder down in a temporary tree: its relative state_dir
    # (the buffer the agent writes each tick) lands inside the temporary tree too.
    cfg_path = tmp_path / "configs" / DEMO_CONFIG.name
    cfg_path.parent.mkdir()
    cfg_path.write_text(DEMO_CONFIG.read_text())
    agent = Agent(load_config(cfg_path), cfg_path)
    path = RigPath.build(DEMO_CONFIG)
    plant = Plant(31)
    pos = agent.image.positions(TAG_NAMES)
    good = np.zeros(len(TAG_NAMES), dtype=np.int8)
    raised = []
    try:
        for k in range(400):
            if k:
                path.step_plant(plant)
            if k == 200:
                plant.inject("stuck")
            values = np.fromiter(plant.measurements().values(), np.float64, len(TAG_NAMES))
            raised += [e.tag for e in path.tick(plant) if e.event == "raised"]
            now = TICK_T0 + plant.sim_time
            agent.image.update_arrays(pos, values, good, now, now)
            agent.tick(now)
            assert agent.last is not None and path.last is not None
            np.testing.assert_array_equal(agent.last.score, path.last.score)
            np.testing.assert_array_equal(agent.last.residual, path.last.residual)
            assert (agent.alarms.codes() == path.alarms.codes()).all(), k
    finally:
        agent.buffer.close()
    assert "flow" in raised  # the comparison covered an alarm, not only quiet ticks
    assert agent.alarms.raised_total == path.alarms.raised_total == len(raised)
