"""`edge-agent evaluate`: the official SKAB benchmark, or one labelled CSV against a detector.

    edge-agent evaluate --skab DIR --json FILE [--report DIR]
    edge-agent evaluate --data FILE.csv --model M.onnx [--json FILE] [--report DIR]

`--skab` trains one sensor-window detector per labelled file (its training part, the
documented default `SensorConfig`) and evaluates its test part; `--data` evaluates a trained
detector on one labelled CSV in SKAB's format (rows after `--skip-rows`, default the official
400; the rows before are window history only). Both write the metrics (keys `f1`, `far`,
`mar`, `nab_standard`, `nab_lowfp`, `nab_lowfn`, `missed_changepoints`, `false_positives`,
`mean_delay_s`; overall, per group and per file) as JSON, print a table, and with `--report`
write `report.md` with one PNG per file (signals, score, threshold, labels, alarms). Plots need
matplotlib (the `train` extra, with scikit-learn: an engineering-station job), imported only
then. The alarm logic is `models.anomaly.alarm`, the one the agent's
alarm semantics follow. Exit codes: 0 done, 2 bad input or model (the message says which).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.anomaly.benchmark import FileResult

EXIT_INPUT = 2
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


def register(subparsers: Any) -> None:
    """Add the `evaluate` command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="run the SKAB benchmark (--skab DIR) or evaluate a detector on a labelled CSV",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--skab", metavar="DIR", help="folder in SKAB's layout (group folders)")
    src.add_argument("--data", metavar="CSV", help="one labelled CSV in SKAB's format")
    p.add_argument("--model", metavar="ONNX", help="sensor detector for --data")
    p.add_argument("--json", metavar="FILE", help="write the metrics here")
    p.add_argument("--report", metavar="DIR", help="write report.md and one PNG per file")
    p.add_argument(
        "--skip-rows", type=int, default=400, help="--data: rows used only as history (400)"
    )
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.progress import Progress  # noqa: PLC0415

    from models.anomaly import benchmark  # noqa: PLC0415
    from models.anomaly.sensor import SensorDetector  # noqa: PLC0415
    from models.anomaly.skab import SkabFormatError, read_skab_csv  # noqa: PLC0415
    from models.base import ModelError  # noqa: PLC0415

    try:
        if args.skab:
            if not args.json:
                raise SkabFormatError("--skab needs --json FILE for the metrics")
            with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
                task = bar.add_task("benchmark", total=None)
                result = benchmark.run_benchmark(
                    args.skab, on_file=lambda name: bar.update(task, description=name)
                )
            files, out = result.files, result.metrics()
            out["config"] = json.loads(result.config.to_json())
            out["drift_rows"] = result.drift.rows
            out["normal_files"] = [Path(p).name for p in result.normal_files]
        else:
            if not args.model:
                raise SkabFormatError(
                    "--data needs --model M.onnx (train one with edge-agent train)"
                )
            detector = SensorDetector.load(args.model)
            data = read_skab_csv(args.data, require_labels=True, sensors=detector.input_names)
            if not 0 <= args.skip_rows < len(data):
                raise SkabFormatError(f"--skip-rows {args.skip_rows} leaves no row of {args.data}")
            size = Path(args.model).stat().st_size
            files = [benchmark.evaluate_file(detector, data, args.skip_rows, size)]
            out = benchmark.summarise(files)
            meta = detector.metadata
            out["model"] = {k: meta[k] for k in ("training_sha256", "created", "version")}
    except (SkabFormatError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(table(out))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
        print(f"wrote {path}")
    if args.report:
        try:
            write_report(Path(args.report), files, out)
        except ModuleNotFoundError as exc:
            print(f"error: --report needs matplotlib ({exc}); install it", file=sys.stderr)
            return EXIT_INPUT
        print(f"wrote {Path(args.report) / 'report.md'}")
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def table(metrics_by_group: dict[str, Any]) -> str:
    """A Markdown table: one row per group (overall first), one column per key."""
    rows = [k for k in metrics_by_group if isinstance(metrics_by_group[k], dict)]
    rows = [k for k in rows if k not in ("files", "config", "model")]
    lines = ["| group | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for g in rows:
        m = metrics_by_group[g]
        lines.append(f"| {g} | " + " | ".join(_fmt(m.get(k)) for k in KEYS) + " |")
    return "\n".join(lines)


def write_report(folder: Path, files: list[FileResult], metrics_out: dict[str, Any]) -> None:
    """`report.md` plus one PNG per file; imports matplotlib (raises if it is missing)."""
    import matplotlib  # noqa: PLC0415  (optional: the train extra)
    import numpy as np  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Detector evaluation", "", table(metrics_out), "", "## Files", ""]
    for r in files:
        f = r.file
        name = f"{f.group}_{f.name}.png"
        fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
        t = (f.ts - f.ts[0]) / 60.0
        z = (f.values - f.values.mean(axis=0)) / np.where((sd := f.values.std(axis=0)) > 0, sd, 1.0)
        for i, col in enumerate(f.columns):
            axes[0].plot(t, z[:, i], lw=0.6, label=col)
        axes[0].set_ylabel("measured (z)")
        axes[0].legend(fontsize=6, ncol=4, loc="upper left")
        axes[1].plot(t, r.scores, lw=0.7, color="k", label="score")
        axes[1].axhline(1.0, color="r", ls="--", lw=0.8, label="threshold")
        axes[1].set_yscale("symlog", linthresh=1.0)
        axes[1].set_ylabel("score")
        axes[1].legend(fontsize=7, loc="upper left")
        assert f.anomaly is not None and f.changepoint is not None
        axes[2].fill_between(t, 0, f.anomaly, step="post", alpha=0.3, color="r", label="anomaly")
        axes[2].plot(t, r.predicted.astype(float) * 0.8, drawstyle="steps-post", label="alarm")
        for c in t[f.changepoint == 1]:
            axes[2].axvline(c, color="g", lw=0.8)
        axes[2].set_ylabel("labels / alarm")
        axes[2].set_xlabel("minutes into the evaluated part")
        axes[2].legend(fontsize=7, loc="upper left")
        fig.suptitle(f"{f.group}/{f.name}")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=80)
        plt.close(fig)
        m = metrics_out["files"].get(f"{f.group}/{f.name}", {})
        lines += [
            f"### {f.group}/{f.name}",
            "",
            f"F1 {_fmt(m.get('f1'))}, FAR {_fmt(m.get('far'))} %, MAR {_fmt(m.get('mar'))} %, "
            f"NAB standard {_fmt(m.get('nab_standard'))}; signals contributing most while "
            f"alarmed: {', '.join(r.top_inputs)}",
            "",
            f"![{f.group}/{f.name}]({name})",
            "",
        ]
    (folder / "report.md").write_text("\n".join(lines))
