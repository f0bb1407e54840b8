"""`edge-agent evaluate` and `train --data` on a synthetic folder in SKAB's layout (no real data
needed): the official split, the JSON keys, detection of large faults, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import structlog

from edge_agent.cli import main
from models.anomaly.benchmark import run_benchmark

COLUMNS = ("Accelerometer1RMS", "Current", "Pressure", "Temperature", "Volume Flow RateRMS")
LEVEL = np.array([0.2, 2.4, 0.1, 70.0, 120.0])
NOISE = np.array([0.002, 0.45, 0.25, 0.3, 0.5])
KEYS = (
    "f1",
    "far",
    "mar",
    "nab_standard",
    "nab_lowfp",
    "nab_lowfn",
    "missed_changepoints",
    "false_positives",
    "mean_delay_s",
)


def write_file(
    path: Path, rng: np.random.Generator, rows: int, fault: tuple[int, int] | None
) -> None:
    """Normal signals (noise, slow warm-up); a fault drops the flow by 20 noise sigmas."""
    values = LEVEL + rng.standard_normal((rows, len(COLUMNS))) * NOISE
    values[:, 3] += np.linspace(0, 2.0, rows)
    anomaly = np.zeros(rows, dtype=int)
    cp = np.zeros(rows, dtype=int)
    if fault:
        a, b = fault
        values[a:b, 4] -= 20 * NOISE[4]
        values[a:b, 1] -= 6 * NOISE[1]
        anomaly[a:b] = 1
        cp[[a, b]] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = 1583748000
    with path.open("w") as f:
        head = ["datetime", *COLUMNS] + (["anomaly", "changepoint"] if fault else [])
        f.write(";".join(head) + "\n")
        for k in range(rows):
            stamp = (
                np.datetime64(t0 + k + (30 if k >= 200 else 0), "s").astype(str).replace("T", " ")
            )
            cells = [stamp, *(f"{v:.6g}" for v in values[k])]
            if fault:
                cells += [f"{anomaly[k]}.0", f"{cp[k]}.0"]
            f.write(";".join(cells) + "\n")


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """`main(["train", ...])` configures structlog onto this test's captured stderr; undo it
    so later tests do not log into a closed stream."""
    yield None
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def skab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two groups of labelled files and one anomaly-free recording."""
    root = tmp_path_factory.mktemp("skab")
    rng = np.random.default_rng(3)
    for k in range(3):
        write_file(root / "valve1" / f"{k}.csv", rng, 900, (550, 750))
    for k in (1, 2):
        write_file(root / "other" / f"{k}.csv", rng, 850, (600, 700))
    write_file(root / "anomaly-free" / "anomaly-free.csv", rng, 3000, None)
    return root


def test_skab_benchmark_json(skab_dir: Path, tmp_path: Path) -> None:
    """evaluate --skab writes every key overall and per group and finds the large faults."""
    out = tmp_path / "m.json"
    assert main(["evaluate", "--skab", str(skab_dir), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for group in ("overall", "valve1", "other"):
        for key in KEYS:
            assert key in result[group], (group, key)
    overall = result["overall"]
    # the window (20 rows) and the clear delay keep the alarm on after each fault ends
    assert overall["f1"] > 0.8 and overall["far"] < 20 and overall["mar"] < 10
    assert overall["nab_standard"] > 30
    assert overall["rows"] == 3 * 500 + 2 * 450
    assert result["files"]["valve1/0"]["top_inputs"][0] in ("Volume Flow RateRMS", "Current")


def test_report_has_a_plot_and_the_metrics_per_file(skab_dir: Path, tmp_path: Path) -> None:
    """evaluate --report writes report.md with the table and one PNG per file, each linked and
    with that file's own figures."""
    out, report = tmp_path / "m.json", tmp_path / "report"
    args = ["evaluate", "--skab", str(skab_dir), "--json", str(out), "--report", str(report)]
    assert main(args) == 0
    metrics = json.loads(out.read_text())
    text = (report / "report.md").read_text()
    assert "| overall |" in text and "| valve1 |" in text and "| other |" in text
    names = ["valve1/0", "valve1/1", "valve1/2", "other/1", "other/2"]
    for name in names:
        png = report / (name.replace("/", "_") + ".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png.name})" in text
        section = text.split(f"### {name}\n", 1)[1].split("###", 1)[0]
        f1 = float(section.split("F1 ", 1)[1].split(",", 1)[0])
        assert f1 == pytest.approx(metrics["files"][name]["f1"], abs=5e-3)
    assert len(list(report.glob("*.png"))) == len(names)


def test_train_then_evaluate_one_file_matches_benchmark(skab_dir: Path, tmp_path: Path) -> None:
    """train --data + evaluate --data reproduce the benchmark's figures for that file."""
    model = tmp_path / "d.onnx"
    data = skab_dir / "valve1" / "1.csv"
    assert main(["train", "--data", str(data), "--out", str(model), "--seed", "0"]) == 0
    out = tmp_path / "one.json"
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--json", str(out)]) == 0
    one = json.loads(out.read_text())["files"]["valve1/1"]
    bench = run_benchmark(skab_dir).metrics()["files"]["valve1/1"]
    for key in KEYS:
        assert one[key] == bench[key], key


def test_train_is_reproducible(skab_dir: Path, tmp_path: Path) -> None:
    """Same data and seed, same bytes (creation time pinned by SOURCE_DATE_EPOCH); the two
    trainings run side by side, so they share nothing but the inputs."""
    data = str(skab_dir / "other" / "1.csv")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    outs = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    cmd = [sys.executable, "-m", "edge_agent.cli", "train", "--data", data, "--out"]
    procs = [
        subprocess.Popen([*cmd, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for out in outs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()
    blobs = [out.read_bytes() for out in outs]
    assert blobs[0] == blobs[1]


def test_wrong_model_for_data_is_refused(
    skab_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV lacking a sensor the model reads gives exit 2 and names the column."""
    model = tmp_path / "d.onnx"
    assert main(["train", "--data", str(skab_dir / "valve1" / "0.csv"), "--out", str(model)]) == 0
    bad = tmp_path / "g" / "x.csv"
    bad.parent.mkdir()
    text = (skab_dir / "valve1" / "0.csv").read_text().replace("Pressure", "Pressure2")
    bad.write_text(text)
    assert main(["evaluate", "--data", str(bad), "--model", str(model)]) == 2
    assert "Pressure" in capsys.readouterr().err


def test_train_refuses_to_overwrite_rig_detector(
    skab_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out a SKAB CSV would replace the shipped detector: refused."""
    assert main(["train", "--data", str(skab_dir / "valve1" / "0.csv")]) == 2
    assert "--out" in capsys.readouterr().err
