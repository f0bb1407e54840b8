"""Load-time checks of a model's functions: run in Python, then compiled, at the nominal point.

This module owns how `models.process.spec` proves a model file's functions before anything runs
them: each is called in plain Python (writes outside its arrays, entries left unwritten, NaN or
inf, exceptions), then compiled by numba (what it cannot compile, with the model file's line),
and the two results compared; an optional `max_rate` must bound the finite-difference Gershgorin
rate of the derivative. Errors are `ModelError` as `model name (file): field: problem`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numba
import numpy as np

from models.base import F64, ModelError

_Fn = Callable[..., Any]


class _Ctx:
    """Formats errors as `model (file): field: problem`."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.model_file = ""

    def error(self, field: str, problem: str) -> ModelError:
        return ModelError(f"model {self.name} ({self.source}): {field}: {problem}")


def _first_numba_line(exc: Exception, model_file: Path) -> str:
    """The first informative line of a numba error, with the model file's line it points at."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    informative = [ln for ln in lines if not ln.startswith(("Failed in", "\x1b"))]
    first = (informative or lines or [type(exc).__name__])[0]
    # The generated module starts with the model file verbatim: its line numbers are the same.
    where = re.search(r'File "[^"]*", line (\d+)', str(exc))
    return f"{first} (at {model_file.name}:{where.group(1)})" if where else first


def _try_function(
    ctx: _Ctx, fname: str, fn: _Fn, args: tuple[F64, ...], labels: tuple[str, ...]
) -> F64:
    """Run `fn(*args, out)` in Python; the out array must come back fully written and finite."""
    what = _OUT_ARRAY[fname]
    out = np.full(len(labels), np.nan)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fn(*args, out)
    except IndexError as exc:
        raise ctx.error(
            fname, f"writes or reads outside its arrays ({what} has shape {out.shape}): {exc}"
        ) from exc
    except Exception as exc:
        raise ctx.error(fname, f"raised {type(exc).__name__} at nominal inputs: {exc}") from exc
    bad = [labels[i] for i in range(len(out)) if not math.isfinite(out[i])]
    if bad:
        raise ctx.error(
            fname,
            f"{what}[{', '.join(bad)}] is NaN, inf or never written at nominal inputs and params",
        )
    return out.copy()


def _check_compiled(ctx: _Ctx, fname: str, fn: _Fn, args: tuple[F64, ...], expect: F64) -> None:
    out = np.empty_like(expect)
    try:
        fn(*args, out)
    except numba.core.errors.NumbaError as exc:
        model_file = Path(ctx.model_file)
        line = _first_numba_line(exc, model_file)
        raise ctx.error(fname, f"numba cannot compile it: {line}") from exc
    if not np.allclose(out, expect, rtol=1e-9, atol=1e-12, equal_nan=True):
        raise ctx.error(fname, "compiled result differs from the Python one at nominal inputs")


# The name of the array each model function fills, for error messages.
_OUT_ARRAY = {"derivative": "dx", "output": "y", "initial": "x"}


def check_functions(
    ctx: _Ctx, module: ModuleType, spec_names: dict[str, tuple[str, ...]], nominal: dict[str, F64]
) -> bool:
    """Run each model function in Python, then compiled, at the nominal point; True if `initial`."""
    states, outputs = spec_names["STATES"], spec_names["OUTPUTS"]
    x, u, p = nominal["states"], nominal["inputs"], nominal["params"]
    python: dict[str, _Fn] = module._engine_python
    for required in ("derivative", "output"):
        if required not in python:
            raise ctx.error(required, f"missing function `def {required}(...)` in the model file")
    calls: dict[str, tuple[tuple[F64, ...], tuple[str, ...]]] = {
        "derivative": ((x, u, p), states),
        "output": ((x, u, p), outputs),
    }
    if "initial" in python:
        calls["initial"] = ((u, np.full(len(outputs), np.nan), p), states)
    results = {
        name: _try_function(ctx, name, python[name], args, labels)
        for name, (args, labels) in calls.items()
    }
    for name, (args, _labels) in calls.items():
        _check_compiled(ctx, name, getattr(module, name), args, results[name])
    if "max_rate" in python:
        _check_max_rate(ctx, module, python, (x, u, p), results["derivative"])
    return "initial" in calls


def _check_max_rate(
    ctx: _Ctx, module: ModuleType, python: dict[str, _Fn], xup: tuple[F64, F64, F64], f0: F64
) -> None:
    """`max_rate` at the nominal point: a finite number >= the finite-difference Gershgorin
    bound of the derivative there, the same compiled as in Python."""
    x, u, p = xup
    try:
        rate = float(python["max_rate"](x, u, p))
    except Exception as exc:
        raise ctx.error(
            "max_rate", f"raised {type(exc).__name__} at nominal inputs: {exc}"
        ) from exc
    rows = np.zeros(len(x))
    for j in range(len(x)):
        xe = x.copy()
        eps = 1e-7 * max(abs(x[j]), 1.0)
        xe[j] += eps
        fe = np.empty_like(x)
        python["derivative"](xe, u, p, fe)
        rows += np.abs((fe - f0) / eps)
    bound = float(rows.max())
    if not (math.isfinite(rate) and rate >= 0.0):
        raise ctx.error("max_rate", f"must return a finite rate >= 0, got {rate!r}")
    if rate < bound * (1.0 - 1e-6):
        raise ctx.error(
            "max_rate",
            f"{rate:g} 1/s is below the finite-difference Gershgorin bound {bound:g} 1/s at "
            "nominal inputs: it would let RK4 go unstable",
        )
    try:
        compiled = float(module.max_rate(x, u, p))
    except numba.core.errors.NumbaError as exc:
        line = _first_numba_line(exc, Path(ctx.model_file))
        raise ctx.error("max_rate", f"numba cannot compile it: {line}") from exc
    if not math.isclose(compiled, rate, rel_tol=1e-9, abs_tol=1e-12):
        raise ctx.error("max_rate", "compiled result differs from the Python one at nominal inputs")
