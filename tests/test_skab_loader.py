"""The SKAB-layout loader: parsing, the official split, gaps, and clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.anomaly.skab import SkabFormatError, discover, looks_like_skab, read_skab_csv

HEADER = "datetime;A;B;anomaly;changepoint"


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(n: int, start_s: int = 0, labels: bool = True) -> list[str]:
    out = []
    for k in range(n):
        s = start_s + k
        stamp = f"2020-03-09 10:{s // 60:02d}:{s % 60:02d}"
        lab = f";{int(k >= n - 2)}.0;{int(k == n - 2)}.0" if labels else ""
        out.append(f"{stamp};{k}.5;{-k}{lab}")
    return out


def test_reads_values_labels_and_utc_times(tmp_path: Path) -> None:
    """Columns come in file order, datetime as UTC seconds, labels as 0/1."""
    f = read_skab_csv(write(tmp_path / "g" / "1.csv", [HEADER, *rows(5)]))
    assert f.columns == ("A", "B") and f.group == "g" and f.labelled
    assert f.values[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert f.ts[0] == 1583748000.0  # 2020-03-09 10:00:00 UTC
    assert f.anomaly is not None and f.anomaly.tolist() == [0, 0, 0, 1, 1]


def test_gaps_are_reported_not_filled(tmp_path: Path) -> None:
    """A 247 s jump stays one row apart and is listed by `gaps`."""
    lines = [HEADER, *rows(3), *rows(3, start_s=250)]
    f = read_skab_csv(write(tmp_path / "g" / "1.csv", lines))
    assert len(f) == 6
    assert f.gaps() == [(3, 248.0)]


def test_official_split(tmp_path: Path) -> None:
    """The first N rows train, the rest test; too short a file is refused."""
    f = read_skab_csv(write(tmp_path / "g" / "1.csv", [HEADER, *rows(10)]))
    train, test = f.split(6)
    assert len(train) == 6 and len(test) == 4 and test.values[0, 0] == 6.5
    with pytest.raises(SkabFormatError, match="need more than 400"):
        f.split()


def test_missing_label_column_names_file_and_column(tmp_path: Path) -> None:
    """A file with `anomaly` but no `changepoint` is refused, naming both."""
    p = write(tmp_path / "g" / "1.csv", ["datetime;A;anomaly", "2020-03-09 10:00:00;1;0"])
    with pytest.raises(SkabFormatError, match=r"1\.csv.*changepoint"):
        read_skab_csv(p)


def test_missing_sensor_column(tmp_path: Path) -> None:
    """Asking for a sensor the file lacks names the sensor."""
    p = write(tmp_path / "g" / "1.csv", [HEADER, *rows(3)])
    with pytest.raises(SkabFormatError, match="missing: C"):
        read_skab_csv(p, sensors=["A", "C"])


def test_wrong_separator_hints(tmp_path: Path) -> None:
    """A comma-separated file gets a hint about the separator."""
    p = write(tmp_path / "g" / "1.csv", ["datetime,A", "2020-03-09 10:00:00,1"])
    with pytest.raises(SkabFormatError, match="separator"):
        read_skab_csv(p)
    assert not looks_like_skab(p)


def test_bad_cells_name_the_line(tmp_path: Path) -> None:
    """A bad number, a bad datetime and a label of 2 each name file and line."""
    good = rows(3)
    bad_number = [HEADER, good[0], good[1].replace("1.5", "x")]
    with pytest.raises(SkabFormatError, match=r"1\.csv:3: column 'A'"):
        read_skab_csv(write(tmp_path / "a" / "1.csv", bad_number))
    bad_time = [HEADER, "09/03/2020 10:00;1;1;0;0"]
    with pytest.raises(SkabFormatError, match=r":2: datetime"):
        read_skab_csv(write(tmp_path / "b" / "1.csv", bad_time))
    bad_label = [HEADER, good[0].rsplit(";", 1)[0] + ";2"]
    with pytest.raises(SkabFormatError, match="must be 0 or 1"):
        read_skab_csv(write(tmp_path / "c" / "1.csv", bad_label))


def test_time_must_increase(tmp_path: Path) -> None:
    """A repeated timestamp is refused with its line."""
    r = rows(3)
    with pytest.raises(SkabFormatError, match=r":4: datetime does not increase"):
        read_skab_csv(write(tmp_path / "g" / "1.csv", [HEADER, r[0], r[1], r[1]]))


def test_discover_groups_numeric_order_and_unlabelled(tmp_path: Path) -> None:
    """Files sort numerically (2 before 10); unlabelled files are kept apart."""
    for name in ("10", "2"):
        write(tmp_path / "valve1" / f"{name}.csv", [HEADER, *rows(4)])
    write(tmp_path / "anomaly-free" / "anomaly-free.csv", ["datetime;A;B", *rows(4, labels=False)])
    labelled, unlabelled = discover(tmp_path)
    assert [f.name for f in labelled] == ["2", "10"]
    assert [f.name for f in unlabelled] == ["anomaly-free"]
    assert np.all(unlabelled[0].values[:, 1] <= 0)


def test_discover_refuses_inconsistent_sensors(tmp_path: Path) -> None:
    """A file with another sensor set than the first is named."""
    write(tmp_path / "g" / "1.csv", [HEADER, *rows(3)])
    write(tmp_path / "g" / "2.csv", ["datetime;A;anomaly;changepoint", "2020-03-09 10:00:00;1;0;0"])
    with pytest.raises(SkabFormatError, match=r"2\.csv.*missing: B"):
        discover(tmp_path)
    with pytest.raises(SkabFormatError, match="not a folder"):
        discover(tmp_path / "nope")
