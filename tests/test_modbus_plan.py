"""Properties and exact cases of Modbus request planning."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import ConfigError
from drivers.modbus.plan import ModbusTag, Request, plan_requests
from tests.fixtures.plc import modbus_tags

TYPES = ["int16", "uint16", "int32", "float32", "float64", "uint64", "bool", "string"]


@st.composite
def one_tag(draw: st.DrawFn, i: int, max_address: int = 400) -> ModbusTag:
    table = draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
    type_ = "bool" if table in ("coil", "discrete") else draw(st.sampled_from(TYPES))
    return ModbusTag(
        f"t{i}",
        draw(st.integers(0, max_address)),
        type=type_,
        table=table,
        unit=draw(st.integers(1, 3)),
        bit=draw(st.integers(0, 15)) if type_ == "bool" and table in ("holding", "input") else None,
        length=draw(st.integers(1, 8)) if type_ == "string" else 0,
    )


@st.composite
def tag_sets(draw: st.DrawFn, max_tags: int = 40, max_address: int = 400) -> list[ModbusTag]:
    n = draw(st.integers(1, max_tags))
    return [draw(one_tag(i, max_address)) for i in range(n)]


def _check(plan: list[Request], tags: list[ModbusTag], limits: dict[str, tuple[int, int]]) -> None:
    covered = [t.name for r in plan for t in r.tags]
    assert sorted(covered) == sorted(t.name for t in tags)
    for r in plan:
        gap, size = limits["bits" if r.table in ("coil", "discrete") else "registers"]
        assert 1 <= r.count <= size
        used: set[int] = set()
        for t in r.tags:
            assert (t.unit, t.table) == (r.unit, r.table)
            assert r.address <= t.address and t.end <= r.address + r.count
            used.update(range(t.address, t.end))
        # No run of unused registers (bits) inside a request is longer than the gap limit:
        # a gap larger than that is a bound no request crosses.
        run = 0
        for a in range(r.address, r.address + r.count):
            run = 0 if a in used else run + 1
            assert run <= gap
        assert r.address in used and r.address + r.count - 1 in used


@given(
    tags=tag_sets(),
    max_gap=st.integers(0, 30),
    max_registers=st.integers(8, 125),
    max_bit_gap=st.integers(0, 50),
    max_bits=st.integers(1, 2000),
)
def test_plan_properties(
    tags: list[ModbusTag], max_gap: int, max_registers: int, max_bit_gap: int, max_bits: int
) -> None:
    """Every tag is covered once by a request of its unit/table, within the size limits, and
    no request bridges more than the gap limit."""
    plan = plan_requests(tags, max_gap, max_registers, max_bit_gap=max_bit_gap, max_bits=max_bits)
    _check(plan, tags, {"registers": (max_gap, max_registers), "bits": (max_bit_gap, max_bits)})


def _feasible(group: list[ModbusTag], gap: int, size: int) -> bool:
    used = sorted({a for t in group for a in range(t.address, t.end)})
    if used[-1] + 1 - used[0] > size:
        return False
    return all(b - a - 1 <= gap for a, b in itertools.pairwise(used))


def _fewest(tags: list[ModbusTag], gap: int, size: int) -> int:
    """Brute force: the fewest valid requests over every partition of `tags`."""
    best = len(tags)

    def go(i: int, groups: list[list[ModbusTag]]) -> None:
        nonlocal best
        if len(groups) >= best:
            return
        if i == len(tags):
            if all(_feasible(g, gap, size) for g in groups):
                best = len(groups)
            return
        for g in groups:  # a later tag may fill a gap: check only complete partitions
            g.append(tags[i])
            go(i + 1, groups)
            g.pop()
        groups.append([tags[i]])
        go(i + 1, groups)
        groups.pop()

    go(0, [])
    return best


@settings(max_examples=300)
@given(
    tags=st.lists(
        st.builds(lambda a, w: (a, w), st.integers(0, 40), st.sampled_from([1, 1, 2, 4])),
        min_size=1,
        max_size=7,
    ),
    max_gap=st.integers(0, 6),
    max_registers=st.integers(4, 16),
)
def test_plan_is_minimal_for_the_gap_rule(
    tags: list[tuple[int, int]], max_gap: int, max_registers: int
) -> None:
    """No partition of the tags into valid requests has fewer requests than the plan."""
    width_type = {1: "uint16", 2: "float32", 4: "float64"}
    mtags = [ModbusTag(f"t{i}", a, width_type[w]) for i, (a, w) in enumerate(tags)]
    plan = plan_requests(mtags, max_gap, max_registers)
    assert len(plan) == _fewest(mtags, max_gap, max_registers)


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
    ("tag", "match"),
    [
        (ModbusTag("x", -1), "out of range"),
        (ModbusTag("x", 65535, type="int32"), "out of range"),
        (ModbusTag("x", 0, type="int8"), "type must be"),
        (ModbusTag("x", 0, table="register"), "table must be"),
        (ModbusTag("x", 0, order="ABDC"), "order must be"),
        (ModbusTag("x", 0, type="uint16", table="coil"), "use type = 'bool'"),
        (ModbusTag("x", 0, type="bool", table="coil", bit=1), "bit only applies"),
        (ModbusTag("x", 0, type="bool"), "needs bit"),
        (ModbusTag("x", 0, type="int16", bit=2), "bit only applies"),
        (ModbusTag("x", 0, type="string"), "needs length"),
        (ModbusTag("x", 0, type="string", length=2, order="CDAB"), "ABCD or BADC"),
        (ModbusTag("x", 0, table="input", writable=True), "cannot be written"),
    ],
)
def test_bad_tags_are_config_errors(tag: ModbusTag, match: str) -> None:
    """Unplannable tags raise ConfigError naming the tag and the problem."""
    with pytest.raises(ConfigError, match="'x'") as err:
        plan_requests([tag])
    assert match in str(err.value)


def test_bits_coalesce_up_to_max_bits() -> None:
    """Coils are planned in bits: 2000 per request by default, or the configured lower limit."""
    coils = [ModbusTag(f"c{a}", a, "bool", table="coil") for a in range(0, 2500, 50)]
    assert [(r.address, r.count) for r in plan_requests(coils, max_bit_gap=100)] == [
        (0, 1951),
        (2000, 451),
    ]
    plan = plan_requests(coils, max_bit_gap=100, max_bits=500)
    assert max(r.count for r in plan) <= 500 and len(plan) == 5
    assert {r.fc for r in plan} == {1}


def test_string_and_bits_share_register_requests() -> None:
    """A string's registers and several bits of one register go into one request."""
    tags = [
        ModbusTag("s", 10, "string", length=5),
        ModbusTag("b0", 15, "bool", bit=0),
        ModbusTag("b9", 15, "bool", bit=9),
    ]
    (r,) = plan_requests(tags)
    assert (r.address, r.count, r.fc) == (10, 6, 3)


def test_limits_validated() -> None:
    """max_registers above the protocol limit and negative gaps are rejected."""
    with pytest.raises(ConfigError):
        plan_requests([ModbusTag("a", 0)], max_registers=126)
    with pytest.raises(ConfigError):
        plan_requests([ModbusTag("a", 0)], max_gap=-1)
    with pytest.raises(ConfigError):
        plan_requests([ModbusTag("a", 0, "bool", table="coil")], max_bits=2001)
