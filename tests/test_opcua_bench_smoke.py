"""Smoke run of `bench.opcua --quick`: it runs end to end, prints its table, writes its JSON.

No timing is asserted (speed is the benchmark's business): only that both paths delivered
notifications into the image (the live groups against asyncua's server and against the lean
load server) and the result is well formed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_opcua_benchmark_quick_run(tmp_path: Path) -> None:
    """`python -m bench.opcua --quick` prints the table and a JSON with its three groups."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.opcua", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine:" in proc.stdout and "target:" in proc.stdout
    result = json.loads((tmp_path / "opcua.json").read_text())
    assert result["benchmark"] == "opcua" and result["quick"] is True
    rows = {(r["group"], r["case"]): r for r in result["rows"]}
    groups = {g for g, _ in rows}
    assert len(groups) == 3  # the decode path, live against asyncua servers, live lean
    for (group, case), row in rows.items():
        assert all(math.isfinite(s) and s > 0 for s in row["samples"]), row
        assert case in proc.stdout and group in proc.stdout
        if case in {"driver", "driver fast path"}:
            assert row["baseline"] is not None and (group, row["baseline"]) in rows
    live = [r for (g, _), r in rows.items() if g.startswith("live")]
    assert len(live) == 4
    assert all(r["extra"]["delivered_per_s"] > 0 for r in live)
    assert all(r["extra"]["server_cpu_share"] >= 0 for r in live)
    assert any(g.startswith("live lean") for g in groups)
    assert len(result["targets"]) == 4
    assert "live lean" in result["targets"][3]["what"]
