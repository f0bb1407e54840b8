"""Logging set-up: structlog, JSON lines when not on a terminal, readable when on one.

Every module logs through `structlog.get_logger(__name__)`; this module only decides the output
format and level, once, at start.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def setup_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog; `json=None` picks JSON unless `stream` is a terminal."""
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (asyncua, pymodbus, amqtt) log through stdlib logging: keep them quiet and
    # route what passes through the same output.
    logging.basicConfig(
        level=logging.WARNING, stream=out, format="%(name)s %(levelname)s %(message)s"
    )
    for noisy in ("asyncua", "pymodbus", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
