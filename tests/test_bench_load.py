"""The load rig and its benchmarks: config, stamps, register image, and a `--quick` run of each.

No timing is asserted: the benchmarks measure speed; these tests check that the rig writes a
valid agent config, that a change time survives the stamp encoding, and that each load
benchmark runs end to end against real servers (the rig, mosquitto, the agent) and writes a
complete JSON result.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import load_config
from hil.load.config import agent_config
from hil.load.layout import (
    NAMES,
    STAMP_MODULUS,
    modbus_address,
    part_slices,
    stamp_delay_s,
    stamp_ms,
    tags_of_instance,
)
from hil.load.servers import encode_registers

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_generated_config_is_valid_and_covers_every_tag(protocol: str, tmp_path: Path) -> None:
    """The config written for a 2-process rig validates and lists each tag exactly once."""
    endpoints = (
        ["127.0.0.1:5020", "127.0.0.1:5021"]
        if protocol == "modbus"
        else ["opc.tcp://127.0.0.1:4840/x/", "opc.tcp://127.0.0.1:4841/x/"]
    )
    path = tmp_path / "load.toml"
    path.write_text(agent_config(protocol, 1000, endpoints, deadbands="exception"))  # type: ignore[arg-type]
    cfg = load_config(path)
    names = [t.name for _, t in cfg.tags()]
    assert len(names) == len(set(names)) == 1000
    assert cfg.model.inputs["pump_speed"] == "p0000_pump_speed"
    assert len(cfg.drivers) == 2


def test_partial_last_instance_and_slices() -> None:
    """Tags split into contiguous instance slices; the last instance holds the remainder."""
    slices = part_slices(1000, 3)
    assert [s.start for s in slices] == [0, 19, 38] and slices[-1].stop == 56
    assert len(tags_of_instance(1000, 55)) == 1000 - 55 * 18
    assert modbus_address(2, 1) == 2 * 36 + 2


def test_stamp_survives_register_encoding_and_wraps() -> None:
    """A stamp read back from the register image gives the change time, across the wrap."""
    t = 1_795_000_000.123
    values = np.zeros((2, len(NAMES)))
    values[:, 0] = stamp_ms(t)
    values[:, 1] = 25.5
    regs = encode_registers(values)
    stamp = (regs[0] << 16) | regs[1]
    assert stamp == stamp_ms(t)
    assert math.isclose(stamp_delay_s(stamp, t + 0.25), 0.25, abs_tol=0.0015)
    assert math.isclose(
        stamp_delay_s(STAMP_MODULUS - 10, 0.005 + 2**32 / 1000), 0.015, abs_tol=2e-3
    )
    as_float = np.array(regs[2:4], dtype=np.uint16).astype(">u2").view(">f4")[0]
    assert as_float == np.float32(25.5)


# throughput keeps the rig, the agent run and the counting subscriber from rotting in the
# default suite; the two others reuse that path and run with `-m slow` (20-30 s each).
SLOW = pytest.mark.slow


@pytest.fixture(
    scope="module",
    params=[
        "throughput",
        pytest.param("e2e_delay", marks=SLOW),
        pytest.param("bandwidth", marks=SLOW),
    ],
)
def quick_result(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, subprocess.CompletedProcess[str], Path]:
    """Each load benchmark run once with `--quick` (Modbus only for the two long ones)."""
    name: str = request.param
    out = tmp_path_factory.mktemp(f"bench-{name}")
    args = [sys.executable, "-m", f"bench.{name}", "--quick", "--results-dir", str(out)]
    if name != "bandwidth":
        args += ["--protocols", "modbus"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    return name, proc, out / f"{name}.json"


def test_load_benchmark_quick_run_writes_result(
    quick_result: tuple[str, subprocess.CompletedProcess[str], Path],
) -> None:
    """`python -m bench.<name> --quick` prints its table and writes positive, complete rows."""
    name, proc, path = quick_result
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine:" in proc.stdout
    result = json.loads(path.read_text())
    assert result["benchmark"] == name and result["quick"] is True
    assert {"machine", "rows", "targets", "notes", "config", "commit"} <= result.keys()
    cases = {(r["group"], r["case"]) for r in result["rows"]}
    assert result["rows"]
    for row in result["rows"]:
        assert row["samples"] and all(math.isfinite(s) and s > 0 for s in row["samples"]), row
        assert row["baseline"] is None or (row["group"], row["baseline"]) in cases, row
    if name == "throughput":
        assert any(c.startswith("agent values/s") for _, c in cases)
        assert any(c.startswith("bare CPU") for _, c in cases)
    if name == "e2e_delay":
        assert any(c == "agent p99" for _, c in cases)
    if name == "bandwidth":
        assert {g for g, _ in cases} >= {"100 tags, normal", "100 tags, fault"}
