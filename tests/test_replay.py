"""A recording replayed through the rig's PLCs and the agent alarms on the rows `evaluate` alarms.

The end-to-end test generates a labelled CSV in SKAB's layout (no real data needed), trains a
sensor detector on its training part, evaluates the whole file with the code behind `edge-agent
evaluate`, then replays the file at 10x real time on real OPC UA and Modbus servers to two
agents (one per protocol) publishing to a real mosquitto, and maps the alarm events back to
rows through their timestamps. Tolerance: the same alarm episodes, each edge within one row.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from drivers.base import Quality, Sample
from edge_agent.agent import Agent
from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.sensor_stage import RowAssembler
from hil.replay import Replay, read_recording, tag_name
from models.anomaly.benchmark import evaluate_file, train_from_file
from models.anomaly.sensor import SensorDetector
from models.anomaly.sensor_train import SensorConfig
from models.anomaly.skab import read_skab_csv
from tests.fixtures.mqtt import Mosquitto, MqttSub, poll_until
from tests.fixtures.schemas import check_messages

COLUMNS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
LEVEL = np.array([0.027, 0.040, 1.0, 0.066, 74.5, 25.8, 231.0, 32.0])
NOISE = np.array([0.0003, 0.0008, 0.28, 0.05, 0.3, 0.03, 8.0, 0.4])
ROWS, FAULT, GAP_ROW = 560, (460, 520), 200
SPEED = 10.0  # rows every 100 ms: a loaded machine (a parallel test run) still keeps up
EDGE_ROWS = 1  # tolerance: each alarm edge may move by one row


def write_skab_csv(
    path: Path, seed: int = 5, *, rows: int = ROWS, fault: tuple[int, int] | None = FAULT
) -> None:
    """Noisy normal signals with a slow warm-up and a 30 s gap at row 200; with `fault`, the
    flow and the current drop in those rows (labelled). Without it, no label columns."""
    rng = np.random.default_rng(seed)
    values = LEVEL + rng.standard_normal((rows, len(COLUMNS))) * NOISE
    values[:, 4] += np.linspace(0.0, 2.0, rows)
    values[:, 5] += np.linspace(0.0, 0.5, rows)
    anomaly = np.zeros(rows, dtype=int)
    cp = np.zeros(rows, dtype=int)
    if fault is not None:
        a, b = fault
        values[a:b, 7] -= 20 * NOISE[7]
        values[a:b, 2] -= 6 * NOISE[2]
        anomaly[a:b] = 1
        cp[[a, b]] = 1
    t0 = 1583748000
    labels = ["anomaly", "changepoint"] if fault is not None else []
    lines = [";".join(["datetime", *COLUMNS, *labels])]
    for k in range(rows):
        t = t0 + k + (30 if k >= GAP_ROW else 0)
        stamp = np.datetime64(t, "s").astype(str).replace("T", " ")
        cells = [stamp, *(f"{v:.6g}" for v in values[k])]
        if fault is not None:
            cells += [f"{anomaly[k]}.0", f"{cp[k]}.0"]
        lines.append(";".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def episodes(alarmed: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Runs of alarmed rows as `(first, stop)` pairs."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], alarmed.astype(np.int8), [0]])))
    return [(int(edges[i]), int(edges[i + 1])) for i in range(0, len(edges), 2)]


def alarmed_rows(events: list[dict[str, Any]], replay: Replay, rows: int) -> npt.NDArray[np.bool_]:
    """The alarm state after each row, from raised/cleared events mapped to rows by `ts`."""
    state = np.zeros(rows, dtype=np.int8)
    for ev in events:
        row = replay.row_of(float(ev["ts"]))
        state[row:] = 1 if ev["event"] == "raised" else 0
    return state.astype(np.bool_)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The generated CSV and a detector trained on its training part (fixed seed), with the
    drift model from the normal data beside it, as `edge-agent train` does in SKAB's layout."""
    root = tmp_path_factory.mktemp("replay")
    data = root / "valve1" / "1.csv"
    write_skab_csv(data)
    write_skab_csv(root / "anomaly-free" / "anomaly-free.csv", 6, rows=1200, fault=None)
    blob, _, _ = train_from_file(read_skab_csv(data), SensorConfig(seed=0), root=root)
    model = root / "sensor.onnx"
    model.write_bytes(blob)
    return data, model


async def test_replay_alarms_match_evaluate(
    recording: tuple[Path, Path], mosquitto: Mosquitto, mqtt_sub: MqttSub, tmp_path: Path
) -> None:
    """Replayed at 10x over OPC UA and over Modbus, the agents' MQTT alarm events cover the
    rows evaluate alarms on the same file: the same episodes, each edge within one row."""
    data, model = recording
    detector = SensorDetector.load(model)
    file = read_skab_csv(data, sensors=detector.input_names)
    expected = evaluate_file(detector, file, 0, model.stat().st_size).predicted
    want = episodes(expected)
    a, b = FAULT
    assert any(s < b and e > a for s, e in want), "the fault must be alarmed by evaluate"

    rec = read_recording(data)
    agents: dict[str, Agent] = {}
    async with Replay(rec, speed=SPEED) as replay:
        for proto in ("opcua", "modbus"):
            path = tmp_path / f"{proto}.toml"
            path.write_text(
                replay.agent_config(
                    proto,
                    detector=str(model),
                    mqtt_host=mosquitto.host,
                    mqtt_port=mosquitto.port,
                    agent_id=f"replay-{proto}",
                    state_dir=str(tmp_path / f"state-{proto}"),
                )
            )
            agents[proto] = Agent(load_config(path), path)
        sub = await mqtt_sub(mosquitto.host, mosquitto.port, "edge-agent/v1/#")
        stop = asyncio.Event()
        tasks = [asyncio.create_task(ag.run(stop)) for ag in agents.values()]
        try:
            for ag in agents.values():
                idx = [ag.image.index[t] for t in rec.tags]

                def seen(ag: Agent = ag, idx: list[int] = idx) -> bool:
                    return ag.publisher.connected and bool(np.all(ag.image.recv_ts[idx] > 0))

                assert await poll_until(seen, 30), "agent did not connect to the replay"
            # While the sensor-window alarm is raised, the tag it names counts as in anomaly
            # for the writeback (alarm word, health): sampled during the replay.
            marked: list[bool] = []

            async def watch() -> None:
                while True:
                    for ag in agents.values():
                        tag = ag.sensor.raised_tag if ag.sensor is not None else None
                        if tag is not None:
                            marked.append(bool(ag.anomaly_states()[ag.image.index[tag]]))
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            await replay.play()
            await asyncio.sleep(0.5)  # the last rows' tick and the broker's delivery
            watcher.cancel()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert marked and all(marked), "a raised sensor alarm must mark its tag"
    msgs = sub.snapshot()
    check_messages(msgs)
    for proto, ag in agents.items():
        assert ag.sensor is not None
        assert ag.sensor.rows.late == 0
        topic = f"edge-agent/v1/replay-{proto}/alarms"
        events = [json.loads(m.payload) for m in msgs if m.topic == topic]
        anomaly = [e for e in events if e["kind"] == "anomaly"]
        raised = [e for e in anomaly if e["event"] == "raised"]
        assert raised and all(e["contributors"] for e in raised)
        assert {e["tag"] for e in raised} <= set(rec.tags)
        got = episodes(alarmed_rows(anomaly, replay, len(rec)))
        assert len(got) == len(want), (proto, got, want)
        for (gs, ge), (ws, we) in zip(got, want, strict=True):
            assert abs(gs - ws) <= EDGE_ROWS and abs(ge - we) <= EDGE_ROWS, (proto, got, want)
        # One step per source row: every replayed row (and the NaN row before them). Modbus is
        # polled: a row the replay writes behind its schedule (a loaded machine) can be replaced
        # by the next one before a poll sees it, so there nearly every row is required; the
        # alarm episodes above must match either way.
        if proto == "opcua":
            assert ag.sensor.stepped == len(rec) + 1, proto
        else:
            assert ag.sensor.stepped >= 0.98 * (len(rec) + 1), (proto, ag.sensor.stepped)


def sample(tag: str, value: float, ts: float, quality: Quality = Quality.GOOD) -> Sample:
    return Sample(tag, value, quality, ts, ts)


def test_rows_from_source_timestamps() -> None:
    """A publish carrying two rows grouped by item gives two rows in time order; a tag not
    sent keeps its value; a BAD sample is NaN in its row."""
    rows = RowAssembler(["a", "b", "c"])
    rows.feed([sample("a", 1, 10), sample("b", 2, 10), sample("c", 3, 10)])
    rows.feed([sample("a", 4, 11), sample("a", 7, 12), sample("b", 5, 11), sample("b", 8, 12)])
    rows.feed([sample("c", math.nan, 13, Quality.BAD)])
    got = rows.take()
    assert [ts for ts, _ in got] == [10, 11, 12, 13]
    assert got[1][1].tolist() == [4, 5, 3]
    assert got[2][1].tolist() == [7, 8, 3]
    assert math.isnan(got[3][1][2]) and got[3][1][0] == 7
    assert rows.take() == []
    rows.feed([sample("a", 0, 9)])  # older than the last row: applied, counted
    assert rows.late == 1 and rows.take() == []


def test_rows_from_a_clock_tag() -> None:
    """With a clock tag, a new clock value opens a row that holds the inputs of the same batch,
    whatever their order; repeated polls of one row give one row."""
    rows = RowAssembler(["a"], clock_tag="clk")
    rows.feed([sample("a", 1, 100), sample("clk", 50.0, 100)])
    rows.feed([sample("a", 1, 101), sample("clk", 50.0, 101)])
    rows.feed([sample("a", 2, 102), sample("clk", 51.0, 102)])
    got = rows.take()
    assert [(ts, v.tolist()) for ts, v in got] == [(50.0, [1]), (51.0, [2])]


def _cfg(extra: dict[str, object]) -> dict[str, object]:
    driver = {
        "kind": "opcua",
        "name": "p",
        "endpoint": "opc.tcp://127.0.0.1:4840/",
        "tags": [{"name": "x", "node": "ns=2;s=x"}],
    }
    return {"drivers": [driver], **extra}


def test_config_rules_for_the_sensor_detector(tmp_path: Path) -> None:
    """No [model] is allowed only with a sensor detector; a sensor detector needs its file,
    takes its alarm settings from it, and names only defined tags."""
    where = tmp_path / "a.toml"
    with pytest.raises(ConfigError, match=r"model: missing"):
        parse_config(_cfg({}), where)
    with pytest.raises(ConfigError) as exc:
        parse_config(
            _cfg({"detector": {"kind": "sensor", "raise_after_s": 1.0, "tag": "nope"}}), where
        )
    text = str(exc.value)
    assert "detector.path: required" in text
    assert "detector.raise_after_s" in text
    assert "detector.tag: tag 'nope'" in text
    cfg = parse_config(_cfg({"detector": {"kind": "sensor", "path": "m.onnx"}}), where)
    assert cfg.model.kind == "none"


def test_agent_refuses_a_detector_input_without_a_tag(
    recording: tuple[Path, Path], tmp_path: Path
) -> None:
    """A detector input mapped to no defined tag is a config error naming the input."""
    _, model = recording
    cfg = parse_config(
        _cfg({"detector": {"kind": "sensor", "path": str(model), "inputs": {"Current": "x"}}}),
        tmp_path / "a.toml",
    )
    with pytest.raises(ConfigError) as exc:
        Agent(cfg, tmp_path / "a.toml")
    assert "detector.inputs.Pressure: tag 'Pressure'" in str(exc.value)


def test_tag_names_and_ts_recordings(tmp_path: Path) -> None:
    """Column names become valid tag names; a comma CSV with a `ts` column reads too, and
    one whose time does not increase is refused."""
    assert tag_name("Volume Flow RateRMS") == "volume_flow_raterms"
    assert tag_name("1st") == "c_1st"
    good = tmp_path / "r.csv"
    good.write_text("ts,Flow,Temp\n100,1.5,20\n101,1.6,20.5\n")
    rec = read_recording(good)
    assert rec.tags == ("flow", "temp") and rec.values.shape == (2, 2)
    bad = tmp_path / "b.csv"
    bad.write_text("ts,Flow\n100,1\n100,2\n")
    with pytest.raises(ValueError, match="increase"):
        read_recording(bad)
