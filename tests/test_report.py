"""Report by exception: deadband, quality and alarm changes, heartbeat."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.report import Reporter, TickColumns, number_strings
from tests.fixtures.schemas import validator


def rep() -> Reporter:
    return Reporter(["a", "b"], ["m", ""], [0.5, 0.0], heartbeat_s=10.0, topic_prefix="p/x")


def due(
    r: Reporter,
    now: float,
    a: float,
    b: float,
    *,
    q: tuple[int, int] = (0, 0),
    alarm: tuple[str, str] = ("none", "none"),
) -> list[int]:
    v = np.array([a, b])
    return [
        int(i) for i in r.due(now, v, np.full(2, np.nan), np.array(q, dtype=np.int8), list(alarm))
    ]


def test_first_tick_publishes_everything() -> None:
    """Every tag is published on the first tick."""
    assert due(rep(), 0.0, 1.0, 1.0) == [0, 1]


def test_deadband_suppresses_small_changes() -> None:
    """A change within the deadband is not published; a larger one is."""
    r = rep()
    due(r, 0.0, 1.0, 1.0)
    assert due(r, 0.1, 1.4, 1.0) == []
    assert due(r, 0.2, 1.6, 1.0) == [0]


def test_quality_and_alarm_changes_publish() -> None:
    """A quality change or an alarm change publishes even without a value change."""
    r = rep()
    due(r, 0.0, 1.0, 1.0)
    assert due(r, 0.1, 1.0, 1.0, q=(2, 0)) == [0]
    assert due(r, 0.2, 1.0, 1.0, q=(2, 0), alarm=("none", "anomaly")) == [1]


def test_heartbeat_republishes_unchanged_tags() -> None:
    """After heartbeat_s an unchanged tag is published again."""
    r = rep()
    due(r, 0.0, 1.0, 1.0)
    assert due(r, 5.0, 1.0, 1.0) == []
    assert due(r, 10.0, 1.0, 1.0) == [0, 1]


def test_payload_is_json_with_nulls_for_nan() -> None:
    """NaN values become JSON null; the topic carries the tag name."""
    r = rep()
    p = json.loads(
        r.tag_payload(
            r.tag_doc(
                0,
                1.0,
                value=float("nan"),
                source_ts=1.0,
                quality=2,
                reason="comm",
                predicted=2.0,
                residual=float("nan"),
                score=float("nan"),
                alarm="quality",
            )
        )
    )
    assert p["value"] is None and p["quality"] == "bad" and p["predicted"] == 2.0
    assert p["tag"] == "a"
    assert r.tag_topics[0] == "p/x/tags/a"


def test_batches_split_a_tick_at_batch_max() -> None:
    """The deltas of one tick go out in messages of at most batch_max deltas, in tag order."""
    r = Reporter([f"t{i}" for i in range(5)], [""] * 5, [0.0] * 5, heartbeat_s=1, topic_prefix="p")
    docs: list[dict[str, object]] = [{"tag": f"t{i}", "value": i} for i in range(5)]
    bodies = [json.loads(b) for b in r.batches(7.0, docs, 2)]
    assert [len(b["deltas"]) for b in bodies] == [2, 2, 1]
    assert [d["tag"] for b in bodies for d in b["deltas"]] == [f"t{i}" for i in range(5)]
    assert all(b["ts"] == 7.0 for b in bodies)
    assert r.deltas_topic == "p/deltas"


# ------------------------------------------------------------------ array-encoded batches

STATES = ("none", "anomaly", "quality")


def columns(
    n: int,
    rng: np.random.Generator,
    *,
    text: bool = False,
    modelled: tuple[int, ...] = (),
    prediction: str = "good",
) -> TickColumns:
    """Random tick columns with every kind of value the encoder must get right."""
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.0078125, 2.5e-7, 1e300, 1.5,
                         123456789.1234565, -1e-7, 5e-324, 1e16 + 2.0, 0.1234565])  # fmt: skip
    value = rng.normal(0.0, 10.0 ** rng.integers(-8, 12, n), n)
    pick = rng.random(n) < 0.3
    value[pick] = rng.choice(specials, int(pick.sum()))
    quality = rng.choice(np.array([0, 0, 0, 1, 2], dtype=np.int8), n)
    reason = [str(rng.choice(["", "", "comm", "range", 'we"ird\\ü'])) for _ in range(n)]
    model = np.zeros(n, dtype=np.bool_)
    model[list(modelled)] = True

    def model_col() -> npt.NDArray[np.float64]:
        col = np.full(n, np.nan)
        col[model] = rng.normal(0.0, 3.0, int(model.sum()))
        return col

    texts: list[str | None] | None = None
    if text:
        texts = [None] * n
        for i in range(0, n, 3):
            texts[i] = str(rng.choice(["PUMP-7", 'ünï"code', ""]))
    return TickColumns(
        value=value,
        source_ts=1.7e9 + rng.random(n) * 100.0,
        quality=quality,
        reason=reason,
        reasoned=np.array([r != "" for r in reason]),
        predicted=model_col(),
        residual=model_col(),
        score=model_col().astype(np.float32).astype(np.float64),
        cusum=model_col(),
        alarm=rng.choice(np.array([0, 0, 1, 2], dtype=np.int8), n),
        modelled=model,
        prediction=prediction,
        text=texts,
        text_idx=[] if texts is None else [i for i, t in enumerate(texts) if t is not None],
    )


def reporter(n: int) -> Reporter:
    names = [f"t{i}" if i % 7 else f'tä"g\\{i}' for i in range(n)]
    units = ["degC" if i % 2 else "m³/h" for i in range(n)]
    return Reporter(names, units, [0.0] * n, heartbeat_s=10.0, topic_prefix="p")


@pytest.mark.parametrize("seed", range(6))
def test_encoded_batches_equal_dumps_of_docs(seed: int) -> None:
    """The array encoder writes the very bytes `json.dumps` writes for the `tag_doc` dicts:
    rounding, NaN/inf as null, negative zero, huge and tiny values, escaping, text, alarms."""
    rng = np.random.default_rng(seed)
    n = 200
    r = reporter(n)
    cols = columns(n, rng, text=seed % 2 == 1, modelled=(3, 50, 51), prediction="uncertain")
    idx = np.flatnonzero(rng.random(n) < 0.7)
    now = 1.7e9 + seed + 0.0005
    expected = r.batches(now, r.docs(now, idx, cols), 37)
    assert r.encode_batches(now, idx, cols, 37) == expected
    assert len(expected) == -(-len(idx) // 37)


def test_docs_are_the_tag_docs() -> None:
    """`docs` gives each due tag's `tag_doc`, with the prediction only on modelled tags and
    the alarm and text of the tag."""
    rng = np.random.default_rng(1)
    r = reporter(9)
    cols = columns(9, rng, text=True, modelled=(4,), prediction="uncertain")
    docs = r.docs(5.0, np.array([0, 4, 5]), cols)
    assert [d["tag"] for d in docs] == [r.names[0], r.names[4], r.names[5]]
    assert [d["prediction"] for d in docs] == ["none", "uncertain", "none"]
    assert docs[1]["alarm"] == STATES[int(cols.alarm[4])]
    assert cols.text is not None and docs[0]["text"] == cols.text[0]
    assert "text" not in docs[2]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50),
       st.sampled_from([3, 6]))  # fmt: skip
def test_number_strings_match_round(xs: list[float], ndigits: int) -> None:
    """Each string is what `json.dumps` writes for `round(x, ndigits)`, null when not finite."""
    got = number_strings(np.array(xs), ndigits)
    want = [json.dumps(round(x, ndigits)) if math.isfinite(x) else "null" for x in xs]
    assert got == want
    runs = number_strings(np.repeat(np.array(xs), 5), ndigits)  # the once-per-run path
    assert runs == [w for w in want for _ in range(5)]


@given(st.lists(st.one_of(st.integers(-(2**53), 2**53), st.integers(0, 2**32 - 1),
                          st.floats(2.0**40, 2.0**52).map(lambda f: f + 0.5)),
                min_size=1, max_size=50),
       st.sampled_from([3, 6]))  # fmt: skip
def test_number_strings_of_large_integers_and_halves(xs: list[float], ndigits: int) -> None:
    """Counters and stamps (large integers, which skip the tie check) and large halves (which
    keep it) are still written as `json.dumps(round(x, ndigits))`."""
    v = np.array(xs, dtype=np.float64)
    want = [json.dumps(round(float(x), ndigits)) for x in v.tolist()]
    assert number_strings(v, ndigits) == want


def test_encoded_batches_validate_against_the_schema() -> None:
    """Batches from the array encoder pass the deltas schema (text tags included)."""
    rng = np.random.default_rng(7)
    r = reporter(40)
    cols = columns(40, rng, text=True, modelled=(1, 2))
    for body in r.encode_batches(10.0, np.arange(40), cols, 16):
        doc = json.loads(body)
        doc.update({"v": 1, "agent_id": "a", "stream": "deltas", "seq": 0, "run": "0123abcd",
                    "historical": False})  # fmt: skip
        validator("urn:edge-agent:schema:deltas").validate(doc)


def test_no_due_tag_no_batch() -> None:
    """A tick with nothing due encodes no message."""
    r = reporter(3)
    cols = columns(3, np.random.default_rng(0))
    assert r.encode_batches(1.0, np.zeros(0, dtype=np.intp), cols, 10) == []


def test_due_takes_alarm_codes_and_compares_only_text_tags() -> None:
    """Alarm codes work like the names; a text change on a listed text tag is due."""
    r = rep()
    v, res, q = np.array([1.0, 1.0]), np.full(2, np.nan), np.zeros(2, dtype=np.int8)
    texts: list[str | None] = [None, "A"]

    def due_now(now: float, alarm: npt.NDArray[np.int8] | list[str]) -> list[int]:
        return r.due(now, v, res, q, alarm, text=texts, text_idx=[1]).tolist()

    assert due_now(0.0, np.array([0, 0], np.int8)) == [0, 1]
    assert due_now(0.1, np.array([0, 1], np.int8)) == [1]
    texts[1] = "B"
    assert due_now(0.2, np.array([0, 1], np.int8)) == [1]
    assert due_now(0.3, ["none", "anomaly"]) == []
