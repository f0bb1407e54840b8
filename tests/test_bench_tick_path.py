"""Smoke run of `bench.tick_path` (the array path against the dict/object path): it runs in
`--quick` mode, prints its table and writes its JSON. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tick_path_quick_run_prints_table_and_writes_json(tmp_path: Path) -> None:
    """Every step is measured for both paths, each contender against its baseline of the same
    run (the encoder's bytes are checked against json.dumps before timing)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tick_path", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "machine:" in proc.stdout
    result = json.loads((tmp_path / "tick_path.json").read_text())
    assert result["benchmark"] == "tick_path" and result["quick"] is True
    rows = {(r["group"], r["case"]): r for r in result["rows"]}
    assert set(rows) == {
        ("image N=100", "samples + update"),
        ("image N=100", "update_arrays"),
        ("encode N=100", "dicts + json.dumps"),
        ("encode N=100", "encode_batches"),
    }
    assert rows[("image N=100", "update_arrays")]["baseline"] == "samples + update"
    assert rows[("encode N=100", "encode_batches")]["baseline"] == "dicts + json.dumps"
    assert all(r["samples"] and min(r["samples"]) > 0 for r in rows.values())
    assert all(case in proc.stdout for _, case in rows)
