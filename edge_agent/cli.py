"""The `edge-agent` command line: run, check-config, demo, train.

Exit codes: 0 success, 2 invalid config or model (every problem listed on stderr), 1 anything
else. Heavy modules (numba, onnxruntime, asyncua) are imported only by the commands that need
them, after the numba cache directory has been pointed into the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path

EXIT_CONFIG = 2

# Commands that live in their own module: each has `register(subparsers)` and keeps its
# module-level imports light (heavy ones inside the command function).
EXTRA_COMMANDS: tuple[str, ...] = (
    "edge_agent.sign_commands",
    "edge_agent.evaluate",
    "edge_agent.opcua_commands",
)


def _set_cache_dir(state_dir: Path) -> None:
    # numba reads NUMBA_CACHE_DIR when it is first imported, so this must run before that.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(state_dir / "numba-cache"))
    # Authored models are compiled from a generated module; keep it in the state directory too
    # (the install may be read-only under systemd).
    os.environ.setdefault("EDGE_AGENT_MODEL_CACHE", str(state_dir / "models"))


def _load_or_exit(path: str) -> tuple[object, Path]:
    from edge_agent.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        print("fix the keys above and run `edge-agent check-config FILE` again", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return cfg, Path(path).resolve()


def _parse_or_exit(text: str, path: Path) -> object:
    """The config from `text` (what `path` held when it was loaded)."""
    import tomllib

    from edge_agent.config import ConfigError, parse_config

    try:
        return parse_config(tomllib.loads(text), path)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _state_dir(cfg: object, path: Path) -> Path:
    from edge_agent.config import Config

    assert isinstance(cfg, Config)
    p = Path(cfg.agent.state_dir)
    return p if p.is_absolute() else path.parent / p


def _build_or_exit(cfg: object, path: Path) -> object:
    """Build the agent (model and detector files loaded and checked, no network I/O)."""
    _set_cache_dir(_state_dir(cfg, path))
    from edge_agent.agent import Agent
    from edge_agent.config import Config, ConfigError
    from models.base import ModelError

    assert isinstance(cfg, Config)
    try:
        return Agent(cfg, path)
    except (ModelError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg, path = _load_or_exit(args.config)
    from edge_agent.config import Config

    assert isinstance(cfg, Config)
    _build_or_exit(cfg, path)
    n_tags = sum(1 for _ in cfg.tags())
    print(f"{path}: ok ({len(cfg.drivers)} drivers, {n_tags} tags, model and detector loaded)")
    return 0


def release_startup_memory() -> bool:
    """Give the heap freed after start-up (config parsing, model compilation) back to the OS:
    a full collection, then glibc's `malloc_trim(0)`, about 5 MB at 10k tags. False where
    there is no glibc (nothing to do there)."""
    import ctypes
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


async def _run_until_signal(agent: object) -> None:
    from edge_agent.agent import Agent

    assert isinstance(agent, Agent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR1: re-synchronise the Digital Original's state from measurements now.
    loop.add_signal_handler(signal.SIGUSR1, agent.request_resync)
    await agent.run(stop)


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.logs import setup_logging

    setup_logging(args.log_level, json=True if args.log_json else None)
    cfg, path = _load_or_exit(args.config)
    # The parsed config is dropped once the agent is built (the agent keeps what it needs);
    # the text it came from is kept to fall back on when a reload does not build.
    source = path.read_text()
    agent = _build_or_exit(cfg, path)
    del cfg
    while True:
        release_startup_memory()
        asyncio.run(_run_until_signal(agent))
        if not getattr(agent, "reload_requested", False):
            return 0
        # A reload command (already validated against the file): start again on the new
        # config; if it no longer builds (e.g. its model file changed since), on the old one.
        try:
            new_cfg, path = _load_or_exit(args.config)
            new_source = path.read_text()
            agent = _build_or_exit(new_cfg, path)
            source = new_source
            del new_cfg
        except SystemExit:
            print(
                "error: reloaded config unusable, continuing with the previous one", file=sys.stderr
            )
            agent = _build_or_exit(_parse_or_exit(source, path), path)


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.logs import setup_logging

    setup_logging(args.log_level, json=False if sys.stdout.isatty() else None)
    _set_cache_dir(Path(args.state_dir))
    from edge_agent.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            duration_s=args.duration,
            broker=args.broker,
            faults=args.fault or [],
            seed=args.seed,
            view=not args.no_view,
        )
    )


def cmd_train(args: argparse.Namespace) -> int:
    from edge_agent.logs import setup_logging

    setup_logging(args.log_level)
    _set_cache_dir(Path(args.state_dir))
    from edge_agent.train import train_main

    return train_main(
        out=Path(args.out),
        minutes=args.minutes,
        seed=args.seed,
        data=Path(args.data) if args.data else None,
        window=args.window,
        segment_min=args.segment_min,
    )


def _fault_help() -> str:
    from hil.faults import FAULT_KINDS

    return "\n".join(f"  {k:<12} {v}" for k, v in FAULT_KINDS.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent",
        description="Run a plant's Digital Original next to the plant and stream the deltas.",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the agent with a config file")
    r.add_argument("--config", required=True, help="TOML config file")
    r.add_argument("--log-json", action="store_true", help="JSON logs even on a terminal")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and exit (2 if invalid)")
    c.add_argument("config", help="TOML config file")
    c.set_defaults(func=cmd_check_config)

    d = sub.add_parser(
        "demo",
        help="run the rig, a broker, the agent and a live view",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fault kinds (--fault KIND@SECONDS, or KIND:key=value@SECONDS):\n" + _fault_help(),
    )
    d.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    d.add_argument("--broker", default=None, help="use this MQTT broker HOST:PORT")
    d.add_argument("--fault", action="append", metavar="KIND@SECONDS", help="inject a fault")
    d.add_argument("--seed", type=int, default=1, help="rig random seed")
    d.add_argument("--state-dir", default="state", help="where caches are kept")
    d.add_argument("--no-view", action="store_true", help="no live table, log lines only")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train the ONNX detector from normal operation")
    t.add_argument("--out", default=None, help="ONNX file to write (default: the shipped one)")
    t.add_argument("--minutes", type=float, default=480.0, help="minutes of simulated rig")
    t.add_argument("--data", default=None, help="CSV recording of normal operation instead")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--window", type=int, default=50, help="window length in ticks")
    t.add_argument(
        "--segment-min",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="cut the run into segments of at least MINUTES, each starting with a model "
        "re-synchronisation as the live agent does after an outage (default 60). Keep them "
        "long against the plant model's slowest time constant (the demo motor's is ~46 min), "
        "or the detector learns the settling after a re-synchronisation as normal",
    )
    t.add_argument("--state-dir", default="state", help="where caches are kept")
    t.set_defaults(func=cmd_train)
    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "out", "x") is None:
        from edge_agent.config import DEFAULT_DETECTOR

        args.out = str(DEFAULT_DETECTOR)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
