"""Properties and exact cases of Modbus request planning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import ConfigError
from drivers.modbus.plan import ModbusTag, plan_requests
from tests.fixtures.plc import modbus_tags

TYPES = ["int16", "uint16", "int32", "float32", "float64"]


@st.composite
def tag_sets(draw: st.DrawFn) -> list[ModbusTag]:
    n = draw(st.integers(1, 40))
    return [
        ModbusTag(
            f"t{i}",
            draw(st.integers(0, 400)),
            type=draw(st.sampled_from(TYPES)),
            table=draw(st.sampled_from(["holding", "input"])),
            unit=draw(st.integers(1, 3)),
        )
        for i in range(n)
    ]


@given(tags=tag_sets(), max_gap=st.integers(0, 30), max_registers=st.integers(4, 125))
def test_plan_properties(tags: list[ModbusTag], max_gap: int, max_registers: int) -> None:
    """Every tag is covered once by a request of its unit/table, within the limits and gaps."""
    plan = plan_requests(tags, max_gap, max_registers)
    covered = [t.name for r in plan for t in r.tags]
    assert sorted(covered) == sorted(t.name for t in tags)
    for r in plan:
        assert 1 <= r.count <= max_registers
        used: set[int] = set()
        for t in r.tags:
            assert (t.unit, t.table) == (r.unit, r.table)
            assert r.address <= t.address and t.end <= r.address + r.count
            used.update(range(t.address, t.end))
        # No run of unused registers inside a request is longer than max_gap.
        run = 0
        for a in range(r.address, r.address + r.count):
            run = 0 if a in used else run + 1
            assert run <= max_gap
        assert r.address in used and r.address + r.count - 1 in used


def test_rig_drive_map_is_one_request() -> None:
    """The rig's drive registers 0..10 coalesce into a single 11-register request."""
    plan = plan_requests(modbus_tags(), max_gap=10, max_registers=125)
    assert [(r.table, r.address, r.count) for r in plan] == [("input", 0, 11)]


def test_gap_and_limit_split() -> None:
    """A gap above max_gap or a request above max_registers starts a new request."""
    tags = [ModbusTag("a", 0), ModbusTag("b", 5), ModbusTag("c", 20), ModbusTag("d", 22)]
    plan = plan_requests(tags, max_gap=4, max_registers=125)
    assert [(r.address, r.count) for r in plan] == [(0, 6), (20, 3)]
    plan = plan_requests(tags, max_gap=100, max_registers=10)
    assert [(r.address, r.count) for r in plan] == [(0, 6), (20, 3)]
    plan = plan_requests(tags, max_gap=100, max_registers=125)
    assert [(r.address, r.count) for r in plan] == [(0, 23)]


def test_units_and_tables_never_mix() -> None:
    """Tags at the same address on different units or tables get separate requests."""
    tags = [ModbusTag("a", 0, unit=1), ModbusTag("b", 0, unit=2), ModbusTag("c", 0, table="input")]
    plan = plan_requests(tags)
    assert sorted((r.unit, r.table) for r in plan) == [(1, "holding"), (1, "input"), (2, "holding")]


@pytest.mark.parametrize(
    "tag",
    [
        ModbusTag("x", -1),
        ModbusTag("x", 65535, type="int32"),
        ModbusTag("x", 0, type="int8"),
        ModbusTag("x", 0, table="coil"),
        ModbusTag("x", 0, order="ABDC"),
    ],
)
def test_bad_tags_are_config_errors(tag: ModbusTag) -> None:
    """Unplannable tags raise ConfigError naming the tag."""
    with pytest.raises(ConfigError, match="'x'"):
        plan_requests([tag])


def test_limits_validated() -> None:
    """max_registers above the protocol limit and negative gaps are rejected."""
    with pytest.raises(ConfigError):
        plan_requests([ModbusTag("a", 0)], max_registers=126)
    with pytest.raises(ConfigError):
        plan_requests([ModbusTag("a", 0)], max_gap=-1)
