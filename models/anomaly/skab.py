"""Reads labelled recordings in SKAB's folder layout and applies the benchmark's official split.

Layout: a root folder with one sub-folder per group (`valve1`, `other`, ...), each holding
`;`-separated CSV files with a `datetime` column (`YYYY-MM-DD hh:mm:ss`, read as UTC), one
numeric column per sensor and, for labelled files, the label columns `anomaly` and
`changepoint` (0/1). A folder whose files carry no labels (`anomaly-free`) is normal operation,
usable for training, never for evaluation.

Official split: the first `TRAIN_ROWS` (400) rows of each labelled file are its training part,
the rest its test part. Rows are kept as recorded: gaps in time (a few files skip seconds, one
skips 247 s) are not filled; `SkabFile.gaps` lists them so a detector can decide what a window
across a gap means.

Owns parsing, validation and the split; it knows nothing of detectors or metrics. Any problem
with a file is a `SkabFormatError` naming the file, the line or column and what was expected.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.base import F64

TRAIN_ROWS = 400
TIME_COLUMN = "datetime"
LABEL_COLUMNS = ("anomaly", "changepoint")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DELIMITER = ";"


class SkabFormatError(ValueError):
    """A file or folder does not follow SKAB's layout; the message names it and the fix."""


@dataclass(frozen=True)
class SkabFile:
    """One recording: `ts` Unix seconds, `values` `(T, C)` in `columns` order, labels or None."""

    name: str
    group: str
    path: Path
    ts: F64
    columns: tuple[str, ...]
    values: F64
    anomaly: npt.NDArray[np.int8] | None
    changepoint: npt.NDArray[np.int8] | None

    @property
    def labelled(self) -> bool:
        """True when the file carries both label columns."""
        return self.anomaly is not None and self.changepoint is not None

    def __len__(self) -> int:
        return len(self.ts)

    def gaps(self, step_s: float = 1.0) -> list[tuple[int, float]]:
        """`(row, seconds since the previous row)` wherever that exceeds `step_s`."""
        dt = np.diff(self.ts)
        rows = np.flatnonzero(dt > step_s) + 1
        return [(int(r), float(dt[r - 1])) for r in rows]

    def rows(self, start: int, stop: int | None = None) -> SkabFile:
        """The rows `[start, stop)` as a file of their own (labels sliced alike)."""
        sl = slice(start, stop)
        return SkabFile(
            name=self.name,
            group=self.group,
            path=self.path,
            ts=self.ts[sl],
            columns=self.columns,
            values=self.values[sl],
            anomaly=None if self.anomaly is None else self.anomaly[sl],
            changepoint=None if self.changepoint is None else self.changepoint[sl],
        )

    def split(self, train_rows: int = TRAIN_ROWS) -> tuple[SkabFile, SkabFile]:
        """The official split: the first `train_rows` rows, then the rest."""
        if len(self) <= train_rows:
            raise SkabFormatError(
                f"{self.path}: {len(self)} rows, need more than {train_rows} for the official "
                "split (the first rows train, the rest are the test part)"
            )
        return self.rows(0, train_rows), self.rows(train_rows)


def read_skab_csv(
    path: str | Path,
    *,
    group: str | None = None,
    require_labels: bool = False,
    sensors: Sequence[str] | None = None,
) -> SkabFile:
    """Read one `;`-separated file; `sensors` (if given) must all be present, in any order,
    and are returned in that order. Raises `SkabFormatError` with the file and line."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=DELIMITER))
    except (OSError, UnicodeDecodeError) as exc:
        raise SkabFormatError(f"{p}: cannot read ({exc})") from exc
    if not rows:
        raise SkabFormatError(f"{p}: empty file, expected a header line")
    header = [h.strip() for h in rows[0]]
    if TIME_COLUMN not in header:
        found = ", ".join(header[:4]) + (", ..." if len(header) > 4 else "")
        hint = " (is the separator ';'?)" if len(header) == 1 else ""
        raise SkabFormatError(f"{p}: no {TIME_COLUMN!r} column in the header ({found}){hint}")
    if len(set(header)) != len(header):
        raise SkabFormatError(f"{p}: duplicate column names in the header")
    has_labels = [c in header for c in LABEL_COLUMNS]
    if (any(has_labels) and not all(has_labels)) or (require_labels and not all(has_labels)):
        missing = [c for c, h in zip(LABEL_COLUMNS, has_labels, strict=True) if not h]
        raise SkabFormatError(
            f"{p}: label column(s) {', '.join(missing)} missing; a labelled file needs "
            f"{' and '.join(LABEL_COLUMNS)}"
        )
    present = [c for c in header if c != TIME_COLUMN and c not in LABEL_COLUMNS]
    if sensors is None:
        wanted = present
    else:
        absent = [s for s in sensors if s not in header]
        if absent:
            raise SkabFormatError(f"{p}: sensor column(s) missing: {', '.join(absent)}")
        wanted = list(sensors)
    if not wanted:
        raise SkabFormatError(f"{p}: no sensor columns besides {TIME_COLUMN} and the labels")
    body = rows[1:]
    if not body:
        raise SkabFormatError(f"{p}: header only, no data rows")
    index = {c: i for i, c in enumerate(header)}
    ts = np.empty(len(body))
    table = np.empty((len(body), len(header)))
    numeric = [i for i, c in enumerate(header) if c != TIME_COLUMN]
    for n, row in enumerate(body):
        line = n + 2
        if len(row) != len(header):
            raise SkabFormatError(f"{p}:{line}: {len(row)} fields, the header has {len(header)}")
        try:
            stamp = datetime.strptime(row[index[TIME_COLUMN]].strip(), TIME_FORMAT)
        except ValueError as exc:
            raise SkabFormatError(
                f"{p}:{line}: datetime {row[index[TIME_COLUMN]]!r} is not {TIME_FORMAT}"
            ) from exc
        ts[n] = stamp.replace(tzinfo=UTC).timestamp()
        for i in numeric:
            try:
                table[n, i] = float(row[i])
            except ValueError as exc:
                raise SkabFormatError(
                    f"{p}:{line}: column {header[i]!r} value {row[i]!r} is not a number"
                ) from exc
    if not np.all(np.isfinite(table[:, numeric])):
        bad = int(np.argwhere(~np.isfinite(table[:, numeric]))[0, 0]) + 2
        raise SkabFormatError(f"{p}:{bad}: NaN or infinite value")
    back = np.flatnonzero(np.diff(ts) <= 0)
    if back.size:
        raise SkabFormatError(
            f"{p}:{int(back[0]) + 3}: datetime does not increase (rows must be in time order)"
        )
    labels: list[npt.NDArray[np.int8] | None] = [None, None]
    if all(has_labels):
        for k, col in enumerate(LABEL_COLUMNS):
            raw = table[:, index[col]]
            if not np.all((raw == 0) | (raw == 1)):
                bad = int(np.flatnonzero((raw != 0) & (raw != 1))[0]) + 2
                raise SkabFormatError(f"{p}:{bad}: label {col!r} must be 0 or 1")
            labels[k] = raw.astype(np.int8)
    return SkabFile(
        name=p.stem,
        group=group if group is not None else p.parent.name,
        path=p,
        ts=ts,
        columns=tuple(wanted),
        values=np.ascontiguousarray(table[:, [index[c] for c in wanted]]),
        anomaly=labels[0],
        changepoint=labels[1],
    )


def looks_like_skab(path: str | Path) -> bool:
    """True when the file's header is `;`-separated and has a `datetime` column."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return DELIMITER in header and TIME_COLUMN in [h.strip() for h in header.split(DELIMITER)]


def _file_key(path: Path) -> tuple[int, int | str]:
    """Numeric stems first in numeric order (2 before 10), then the rest by name."""
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)


def discover(root: str | Path) -> tuple[list[SkabFile], list[SkabFile]]:
    """All files under `root`: `(labelled, unlabelled)`, grouped by sub-folder, sorted by
    group then file number. Every file must have the same sensor columns as the first."""
    base = Path(root)
    if not base.is_dir():
        raise SkabFormatError(f"{base}: not a folder (expected SKAB's layout: group folders)")
    paths = sorted(base.glob("*/*.csv"), key=lambda q: (q.parent.name, _file_key(q)))
    if not paths:
        raise SkabFormatError(
            f"{base}: no group folder with .csv files (expected e.g. valve1/0.csv)"
        )
    labelled: list[SkabFile] = []
    unlabelled: list[SkabFile] = []
    sensors: tuple[str, ...] | None = None
    for q in paths:
        f = read_skab_csv(q, sensors=sensors)
        if sensors is None:
            sensors = f.columns
        elif len(_sensor_header(q)) != len(sensors):
            extra = sorted(set(_sensor_header(q)) - set(sensors))
            raise SkabFormatError(f"{q}: extra sensor column(s) {', '.join(extra)}")
        (labelled if f.labelled else unlabelled).append(f)
    if not labelled:
        raise SkabFormatError(
            f"{base}: no file with the label columns {' and '.join(LABEL_COLUMNS)}"
        )
    return labelled, unlabelled


def _sensor_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f, delimiter=DELIMITER))
    return [h.strip() for h in header if h.strip() not in (TIME_COLUMN, *LABEL_COLUMNS)]


def groups(files: Sequence[SkabFile]) -> dict[str, list[SkabFile]]:
    """Files by group, groups in first-seen order."""
    out: dict[str, list[SkabFile]] = {}
    for f in files:
        out.setdefault(f.group, []).append(f)
    return out
