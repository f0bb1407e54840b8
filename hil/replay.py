"""Replay a recorded CSV through the rig's PLC servers, at real time or N times faster.

    python -m hil.replay FILE.csv --speed 20 --detector M.onnx --config-out replay.toml

Each signal column becomes a tag (`tag_name`: lower case, `_` for anything else), served as a
Double variable on an OPC UA server (`hil.plc_opcua.OpcUaPlc`, node `Loop.<tag>`) and as a
float32 input register pair on a Modbus server (`hil.plc_modbus.ModbusPlc`, unit 1, two
registers per column in column order). One row is written per recorded interval divided by
`speed`, carrying the row's time mapped onto now:

    source time of row k = start + (t_k - t_first) / speed

as the OPC UA SourceTimestamp of every value of the row, and on both servers in the tag
`replay_clock` (Modbus: float64, four registers after the signals), written last, so a poll
that sees a new clock sees the whole row. `replay_row` counts the rows served (0 before the
first). Gaps in the recording stay gaps. Before `play` the signals are NaN (BAD at the agent):
no made-up row reaches a detector.

An agent reading these tags sees the recording as it would see the plant; `agent_config`
writes its config (`[detector] kind = "sensor"`, `time_scale = speed` so durations are
recording seconds; over Modbus the rows are marked by `replay_clock`). OPC UA reports a value
only when it changes: a row equal to the one before in every column is invisible there (the
replay counts such rows and warns; SKAB has none).

Recordings: SKAB's layout (`;`-separated, `datetime`, label columns ignored) via
`models.anomaly.skab`, or a comma-separated file with a `ts` column (Unix seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

import numpy as np
import structlog

from hil.plc_modbus import ModbusPlc
from hil.plc_opcua import OpcUaPlc
from hil.tags import DRIVE_UNIT, NAMESPACE_URI, OPCUA_FOLDER, RegType, TagDef
from models.anomaly.skab import SkabFormatError, looks_like_skab, read_skab_csv
from models.base import F64

log = structlog.get_logger(__name__)

REPLAY_ROW = "replay_row"
REPLAY_CLOCK = "replay_clock"
MAX_SPEED = 100.0  # the agent rounds scaled times to 1 ms; timestamps carry 1 us
Protocol = Literal["opcua", "modbus"]


@dataclass(frozen=True)
class Recording:
    """Rows in time order: `ts` (Unix seconds) and `values` `(T, C)` in `columns` order."""

    path: Path
    ts: F64
    columns: tuple[str, ...]
    values: F64

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def tags(self) -> tuple[str, ...]:
        """The tag name of each column."""
        return tuple(tag_name(c) for c in self.columns)

    def repeated_rows(self) -> int:
        """Rows equal to the previous one in every column (OPC UA would not announce them)."""
        return int(np.all(self.values[1:] == self.values[:-1], axis=1).sum())


def tag_name(column: str) -> str:
    """A tag name for a column: lower case, runs of other characters as `_`."""
    name = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
    return name if name and not name[0].isdigit() else f"c_{name}"


def read_recording(path: str | Path) -> Recording:
    """A SKAB-layout or `ts`-column CSV; `ValueError` (or `SkabFormatError`) names the problem."""
    p = Path(path)
    if looks_like_skab(p):
        f = read_skab_csv(p)
        return Recording(p, f.ts, f.columns, f.values)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read ({exc})") from exc
    if not rows or "ts" not in rows[0]:
        raise ValueError(f"{p}: expected SKAB's layout or a header with a 'ts' column")
    header = rows[0]
    try:
        table = np.array([[float(x) for x in r] for r in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{p}: a value is not a number ({exc})") from exc
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] != len(header):
        raise ValueError(f"{p}: every row needs {len(header)} fields")
    k = header.index("ts")
    ts = table[:, k]
    if np.any(np.diff(ts) <= 0):
        raise ValueError(f"{p}: ts must increase from row to row")
    columns = tuple(h for i, h in enumerate(header) if i != k)
    return Recording(p, ts, columns, np.delete(table, k, axis=1))


class Replay:
    """The recording's rows on PLC servers, paced by the wall clock (async context manager).

    Inside the context the servers listen (endpoints valid) and serve NaN; `play()` writes the
    rows `first..last-1` and returns after the last; `served[k]` is the source time of row
    `first + k` once written.
    """

    def __init__(
        self,
        recording: Recording,
        *,
        speed: float = 1.0,
        protocols: Sequence[Protocol] = ("opcua", "modbus"),
        host: str = "127.0.0.1",
        opcua_port: int = 0,
        modbus_port: int = 0,
        first: int = 0,
        last: int | None = None,
    ) -> None:
        if not 0 < speed <= MAX_SPEED:
            raise ValueError(f"speed must be in (0, {MAX_SPEED:g}], got {speed}")
        self.last = len(recording) if last is None else last
        if not 0 <= first < self.last <= len(recording):
            raise ValueError(f"rows {first}..{self.last} are not inside 0..{len(recording)}")
        if len(set(recording.tags)) != len(recording.tags):
            raise ValueError(f"columns {recording.columns} give duplicate tag names")
        self.recording = recording
        self.speed = speed
        self.first = first
        self.protocols = tuple(protocols)
        signals = [
            TagDef(t, "process", "", c, -math.inf, math.inf)
            for t, c in zip(recording.tags, recording.columns, strict=True)
        ]
        extra = [
            TagDef(REPLAY_ROW, "process", "", "rows served", 0, 2**32 - 1),
            TagDef(REPLAY_CLOCK, "process", "s", "source time of the row", 0, math.inf),
        ]
        self.opcua = OpcUaPlc([*signals, *extra], host=host, port=opcua_port)
        n = len(signals)
        # The rig's tag table lists the drive's register types; the codec also has float64.
        float64 = cast(RegType, "float64")
        self.modbus = ModbusPlc(
            [
                *(TagDef(t.name, "drive", "", t.description, t.lo, t.hi, 2 * i, "float32")
                  for i, t in enumerate(signals)),
                TagDef(REPLAY_ROW, "drive", "", "rows served", 0, 2**32 - 1, 2 * n, "uint32"),
                TagDef(REPLAY_CLOCK, "drive", "s", "row time", 0, math.inf, 2 * n + 2, float64),
            ],
            host=host,
            port=modbus_port,
        )  # fmt: skip
        self.served: list[float] = []
        self.start_ts = math.nan  # source time of the first row played
        self.late_rows = 0  # rows written more than one row period after their time

    @property
    def opcua_endpoint(self) -> str:
        return self.opcua.endpoint

    @property
    def modbus_address(self) -> tuple[str, int]:
        return self.modbus.host, self.modbus.port

    def clock_address(self) -> int:
        """The first input register of `replay_clock` on the Modbus server."""
        return 2 * len(self.recording.columns) + 2

    def row_of(self, source_ts: float) -> int:
        """The recording row (index into the file) served with this source time (nearest)."""
        served = np.asarray(self.served)
        if not len(served):
            raise ValueError("no row served yet")
        return self.first + int(np.argmin(np.abs(served - source_ts)))

    async def _write(self, values: dict[str, float], source_ts: float) -> None:
        if "opcua" in self.protocols:
            await self.opcua.write_values(values, source_ts)
        if "modbus" in self.protocols:
            await self.modbus.write_values(values, source_ts)

    async def __aenter__(self) -> Replay:
        try:
            if "opcua" in self.protocols:
                await self.opcua.start()
            if "modbus" in self.protocols:
                await self.modbus.start()
            idle = dict.fromkeys(self.recording.tags, math.nan)
            await self._write({**idle, REPLAY_ROW: 0.0, REPLAY_CLOCK: 0.0}, time.time())
        except BaseException:
            await self._stop()
            raise
        repeated = self.recording.repeated_rows()
        if repeated and "opcua" in self.protocols:
            log.warning("rows equal to the previous one are invisible over opc ua", rows=repeated)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        await self.modbus.stop()
        await self.opcua.stop()
        self.opcua.cleanup()

    async def play(self) -> None:
        """Write rows `first..last-1`, row k at `start + (t_k - t_first) / speed`."""
        rec, tags = self.recording, self.recording.tags
        loop = asyncio.get_running_loop()
        start_wall, start_mono = time.time(), loop.time()
        self.start_ts = start_wall
        t0 = float(rec.ts[self.first])
        period_s = _row_period(rec.ts) / self.speed
        self.served = []
        for k in range(self.first, self.last):
            offset = (float(rec.ts[k]) - t0) / self.speed
            delay = start_mono + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > period_s:
                self.late_rows += 1
            source_ts = start_wall + offset
            values = {t: float(v) for t, v in zip(tags, rec.values[k], strict=True)}
            values[REPLAY_ROW] = float(k - self.first + 1)
            values[REPLAY_CLOCK] = source_ts  # last: a poll seeing it sees the whole row
            await self._write(values, source_ts)
            self.served.append(source_ts)
        log.info("replay done", rows=len(self.served), late_rows=self.late_rows)

    def agent_config(
        self,
        protocol: Protocol,
        *,
        detector: str,
        mqtt_host: str = "127.0.0.1",
        mqtt_port: int = 1883,
        agent_id: str = "replay",
        state_dir: str = "state-replay",
    ) -> str:
        """TOML of an agent that reads this replay over `protocol` with a sensor detector."""
        if protocol not in self.protocols:
            raise ValueError(f"this replay does not serve {protocol}")
        rec, q = self.recording, json.dumps  # a JSON string is a TOML basic string
        period_s = _row_period(rec.ts) / self.speed
        lines = [
            f"# Replay of {rec.path.name} at {self.speed:g}x real time over {protocol}",
            "# (written by python -m hil.replay).",
            "",
            "[agent]",
            f"id = {q(agent_id)}",
            "tick_hz = 10",
            f"state_dir = {q(state_dir)}",
            "",
            "[mqtt]",
            f"host = {q(mqtt_host)}",
            f"port = {mqtt_port}",
            "",
            "# No [model]: the sensor detector scores the raw signals.",
            "[detector]",
            'kind = "sensor"',
            f"path = {q(detector)}",
            f"time_scale = {self.speed!r}    # source seconds run {self.speed:g}x fast",
        ]
        if protocol == "modbus":
            lines.append(f"clock_tag = {q(REPLAY_CLOCK)}   # Modbus has no timestamps")
        lines += ["", "[detector.inputs]   # detector input = tag"]
        lines += [f"{q(c)} = {q(t)}" for c, t in zip(rec.columns, rec.tags, strict=True)]
        lines += ["", "[[drivers]]"]
        if protocol == "opcua":
            publish_ms = max(5.0, min(100.0, 1000.0 * period_s / 4))
            lines += [
                'kind = "opcua"',
                'name = "replay"',
                f"endpoint = {q(self.opcua_endpoint)}",
                f"publishing_interval_ms = {publish_ms:g}",
            ]
            for t in rec.tags:
                node = f"nsu={NAMESPACE_URI};s={OPCUA_FOLDER}.{t}"
                lines += ["", "[[drivers.tags]]", f"name = {q(t)}", f"node = {q(node)}",
                          "sampling_interval_ms = 0", "queue_size = 100"]  # fmt: skip
            return "\n".join(lines) + "\n"
        poll_s = max(0.005, min(0.1, period_s / 5))
        host, port = self.modbus_address
        lines += [
            'kind = "modbus"',
            'name = "replay"',
            f"host = {q(host)}",
            f"port = {port}",
            f"unit_id = {DRIVE_UNIT}",
            f"poll_interval_s = {poll_s:g}",
            f"timeout_s = {min(1.0, 19 * poll_s):g}",
        ]
        regs = [(t, 2 * i, "float32") for i, t in enumerate(rec.tags)]
        for name, address, type_ in [*regs, (REPLAY_CLOCK, self.clock_address(), "float64")]:
            lines += ["", "[[drivers.tags]]", f"name = {q(name)}", 'table = "input"',
                      f"address = {address}", f'type = "{type_}"']  # fmt: skip
        return "\n".join(lines) + "\n"


def _row_period(ts: F64) -> float:
    """The recording's usual row interval (median), 1 s for a single row."""
    return float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hil.replay",
        description="Serve a recorded CSV's rows on OPC UA and Modbus PLCs, paced in time.",
    )
    p.add_argument("file", help="SKAB-layout CSV, or a CSV with a 'ts' column")
    p.add_argument("--speed", type=float, default=1.0, help="times real time (max 100)")
    p.add_argument("--protocol", choices=("opcua", "modbus", "both"), default="both")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--opcua-port", type=int, default=4840, help="0 picks a free port")
    p.add_argument("--modbus-port", type=int, default=5020, help="0 picks a free port")
    p.add_argument("--from-row", type=int, default=0, help="first row to play (0)")
    p.add_argument("--to-row", type=int, default=None, help="stop before this row (the end)")
    p.add_argument("--delay-s", type=float, default=5.0, help="wait before the first row")
    p.add_argument("--hold-s", type=float, default=5.0, help="keep serving after the last row")
    p.add_argument("--detector", default="detector.onnx", help="sensor detector for the config")
    p.add_argument("--mqtt", default="127.0.0.1:1883", metavar="HOST:PORT")
    p.add_argument(
        "--config-out", metavar="FILE", help="write the agent config here (opcua; with "
        "--protocol modbus the modbus one) instead of printing it",
    )  # fmt: skip
    return p


async def _main(args: argparse.Namespace, recording: Recording) -> None:
    protocols: tuple[Protocol, ...] = (
        ("opcua", "modbus") if args.protocol == "both" else (args.protocol,)
    )
    host, _, port = args.mqtt.rpartition(":")
    async with Replay(
        recording,
        speed=args.speed,
        protocols=protocols,
        host=args.host,
        opcua_port=args.opcua_port,
        modbus_port=args.modbus_port,
        first=args.from_row,
        last=args.to_row,
    ) as replay:
        if "opcua" in protocols:
            print(f"opcua  {replay.opcua_endpoint}")
        if "modbus" in protocols:
            mh, mp = replay.modbus_address
            print(f"modbus {mh}:{mp} unit {DRIVE_UNIT}")
        text = replay.agent_config(
            protocols[0], detector=args.detector, mqtt_host=host, mqtt_port=int(port)
        )
        if args.config_out:
            await asyncio.to_thread(Path(args.config_out).write_text, text)
            print(f"wrote {args.config_out}")
        else:
            print(text)
        rows = replay.last - replay.first
        span = (recording.ts[replay.last - 1] - recording.ts[replay.first]) / args.speed
        print(f"playing {rows} rows in {span:.1f} s after {args.delay_s:g} s", flush=True)
        await asyncio.sleep(args.delay_s)
        await replay.play()
        print(
            f"done: {len(replay.served)} rows from source time {replay.start_ts:.3f} (row "
            f"{replay.first}), {replay.late_rows} written late (their timestamps are not)",
            flush=True,
        )
        await asyncio.sleep(args.hold_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2: bad file or arguments)."""
    args = _parser().parse_args(argv)
    try:
        recording = read_recording(args.file)
        host, sep, port = args.mqtt.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--mqtt {args.mqtt!r}: expected HOST:PORT")
        Replay(recording, speed=args.speed, first=args.from_row, last=args.to_row)
    except (ValueError, SkabFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args, recording))
    return 0


if __name__ == "__main__":
    sys.exit(main())
