"""The process image: BAD samples never replace the last good value; ranges are enforced."""

from __future__ import annotations

import math

import numpy as np

from drivers.base import Quality, Sample, checked_sample
from edge_agent.image import ProcessImage
from edge_agent.report import Reporter


def img() -> ProcessImage:
    return ProcessImage(["a", "b"], [(0.0, 10.0), None])


def test_good_sample_updates_value_and_last_good() -> None:
    """A GOOD sample is stored as value and as last good value."""
    im = img()
    im.update([Sample("a", 5.0, Quality.GOOD, 1.0, 1.1)])
    assert im.value[0] == 5.0 and im.good_value[0] == 5.0 and im.quality[0] == Quality.GOOD


def test_out_of_range_becomes_bad_and_keeps_last_good() -> None:
    """A finite value outside the tag's range becomes BAD 'range'; the last good value stays."""
    im = img()
    im.update([Sample("a", 5.0, Quality.GOOD, 1.0, 1.0)])
    im.update([Sample("a", 50.0, Quality.GOOD, 2.0, 2.0)])
    assert im.quality[0] == Quality.BAD and im.reason[0] == "range"
    assert im.good_value[0] == 5.0
    assert im.bad_counts["range"] == 1


def test_nan_becomes_bad() -> None:
    """NaN is BAD even when a driver forgot to mark it, and does not poison the last good value."""
    im = img()
    im.update([Sample("b", 1.0, Quality.GOOD, 1.0, 1.0)])
    im.update([Sample("b", math.nan, Quality.GOOD, 2.0, 2.0)])
    assert im.quality[1] == Quality.BAD and im.good_value[1] == 1.0
    assert checked_sample("b", float("inf")).quality == Quality.BAD


def test_unknown_tags_are_counted() -> None:
    """A sample for a tag the image does not know is counted and ignored."""
    im = img()
    im.update([Sample("zzz", 1.0, Quality.GOOD, 1.0, 1.0)])
    assert im.unknown_tags == 1 and im.updates == 0


def test_text_tag_is_good_with_its_text_and_no_range() -> None:
    """A text sample (a Modbus string) stays GOOD with NaN as value and its text kept; the
    reporter publishes a change of text like a moved value."""
    im = img()
    im.update([Sample("a", math.nan, Quality.GOOD, 1.0, 1.0, text="PUMP-7")])
    assert im.quality[0] == Quality.GOOD and im.text[0] == "PUMP-7" and im.has_text
    r = Reporter(list(im.names), ["", ""], [0.0, 0.0], heartbeat_s=100.0, topic_prefix="p")
    resid = [math.nan, math.nan]
    alarm = ["none", "none"]
    assert list(r.due(1.0, im.value, np.array(resid), im.quality, alarm, text=im.text)) == [0, 1]
    assert list(r.due(2.0, im.value, np.array(resid), im.quality, alarm, text=im.text)) == []
    im.update([Sample("a", math.nan, Quality.GOOD, 3.0, 3.0, text="PUMP-8")])
    assert list(r.due(3.0, im.value, np.array(resid), im.quality, alarm, text=im.text)) == [0]
    doc = r.tag_doc(0, 3.0, value=math.nan, source_ts=3.0, quality=0, reason="", predicted=math.nan,
                    residual=math.nan, score=math.nan, alarm="none", text=im.text[0])  # fmt: skip
    assert doc["text"] == "PUMP-8" and doc["value"] is None


def _both(samples: list[Sample]) -> tuple[ProcessImage, ProcessImage]:
    """The same batch through `update` and through `update_arrays`."""
    names = ["a", "b", "c", "d", "e"]
    ranges: list[tuple[float, float] | None] = [(0.0, 10.0), None, (-1.0, 1.0), None, (0.0, 1.0)]
    by_samples, by_arrays = ProcessImage(names, ranges), ProcessImage(names, ranges)
    by_samples.update(samples)
    pos = by_arrays.positions([s.tag for s in samples])
    by_arrays.update_arrays(
        pos,
        np.array([s.value for s in samples]),
        np.array([s.quality for s in samples], dtype=np.int8),
        np.array([s.source_ts for s in samples]),
        np.array([s.recv_ts for s in samples]),
        reasons={k: s.reason for k, s in enumerate(samples) if s.reason},
        texts={k: s.text for k, s in enumerate(samples) if s.text is not None},
    )
    return by_samples, by_arrays


def _same(x: ProcessImage, y: ProcessImage) -> None:
    for col in ("value", "quality", "source_ts", "recv_ts", "good_value", "good_ts", "reasoned"):
        np.testing.assert_array_equal(getattr(x, col), getattr(y, col), err_msg=col)
    assert x.reason == y.reason and x.text == y.text and x.text_idx == y.text_idx
    assert x.bad_counts == y.bad_counts and x.updates == y.updates
    assert x.unknown_tags == y.unknown_tags and x.has_text == y.has_text


def test_update_arrays_follows_the_same_rules_as_update() -> None:
    """Columns give the image exactly what samples give it: range and NaN checks, reasons,
    last good values, text tags, BAD counts, unknown tags counted and skipped."""
    first = [
        Sample("a", 5.0, Quality.GOOD, 1.0, 1.1),
        Sample("b", 2.0, Quality.UNCERTAIN, 1.0, 1.1, "stale"),
        Sample("c", 0.5, Quality.GOOD, 1.0, 1.1),
        Sample("zzz", 1.0, Quality.GOOD, 1.0, 1.1),
        Sample("d", math.nan, Quality.GOOD, 1.0, 1.1, text="PUMP-7"),
        Sample("e", math.nan, Quality.BAD, 1.0, 1.1, "comm"),
    ]
    x, y = _both(first)
    _same(x, y)
    assert y.reason[1] == "stale" and y.text[3] == "PUMP-7" and y.unknown_tags == 1
    second = [
        Sample("a", 50.0, Quality.GOOD, 2.0, 2.1),  # out of range
        Sample("b", 3.0, Quality.GOOD, 2.0, 2.1),  # its reason goes
        Sample("c", math.nan, Quality.GOOD, 2.0, 2.1),  # NaN not marked by the driver
        Sample("e", 0.5, Quality.GOOD, 2.0, 2.1),
    ]
    for im in (x, y):
        im.update(second)
    _same(x, y)
    z = ProcessImage(list(y.names), [(0.0, 10.0), None, (-1.0, 1.0), None, (0.0, 1.0)])
    z.update(first)
    z.update_arrays(z.positions([s.tag for s in second]), np.array([s.value for s in second]),
                    np.zeros(4, dtype=np.int8), 2.0, 2.1)  # fmt: skip
    _same(x, z)
    assert z.reason[:3] == ["range", "", "nan"] and z.good_value[0] == 5.0
    assert z.bad_counts["range"] == 1 and z.bad_counts["nan"] == 1


def test_update_arrays_counts_unknown_rows_and_keeps_their_neighbours_reasons() -> None:
    """Rows of unknown tags are dropped and counted; the reasons and texts of the other rows
    still land on the right tags."""
    im = img()
    im.update_arrays(
        np.array([-1, 1, -1, 0]),
        np.array([1.0, math.nan, 2.0, 20.0]),
        np.array([0, 2, 0, 0], dtype=np.int8),
        3.0,
        3.0,
        reasons={1: "timeout", 2: "ignored"},
    )
    assert im.unknown_tags == 2 and im.updates == 2
    assert im.reason == ["range", "timeout"] and im.bad_counts == {"range": 1, "timeout": 1}


def test_update_arrays_later_row_of_a_tag_wins() -> None:
    """Two rows of one tag in a batch (a unit timing out beside an answered request): the
    later one stays, both are counted, as `update` does sample by sample."""
    x, y = _both([
        Sample("a", math.nan, Quality.BAD, 1.0, 1.0, "timeout"),
        Sample("b", 1.0, Quality.GOOD, 1.0, 1.0),
        Sample("a", 4.0, Quality.GOOD, 1.0, 1.0),
    ])  # fmt: skip
    _same(x, y)
    assert y.value[0] == 4.0 and y.reason[0] == "" and y.bad_counts == {"timeout": 1}
    assert y.updates == 3
