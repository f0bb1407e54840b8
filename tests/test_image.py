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
