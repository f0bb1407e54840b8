"""The authoring API of the Digital Original engine: how a process engineer defines a model.

This module owns the model definition format, its validation and its compilation; the
integration of N parameter variants lives in `models.process.engine` (kernels in
`models.process.kernels`).

A model is two files. The Python file holds names and plain functions numba can compile:

    STATES = ("t_hot_out", "t_cold_out")
    INPUTS = ("t_hot_in", "t_cold_in", "flow_hot", "flow_cold")
    OUTPUTS = ("t_hot_out", "t_cold_out")
    PARAMS = ("ua_w_per_k", "c_hot_j_per_k")        # the layout of the parameter vector p
    UA = PARAMS.index("ua_w_per_k")                  # index constants, read as p[UA]

    def derivative(x, u, p, dx): ...   # fills dx (len(STATES)); all float64 1-D arrays
    def output(x, u, p, y): ...        # fills y (len(OUTPUTS))
    def initial(u, y_meas, p, x): ...  # optional re-synchronisation rule (NaN in y_meas = unknown)
    def max_rate(x, u, p): ...         # optional: an upper bound (1/s) of the fastest local rate

Parameter convention: the model file's `PARAMS` tuple is the vector layout; the functions read
`p[NAME]` through index constants computed from it (module-level ints are compile-time
constants for numba). The TOML must describe exactly those parameters, in any order. Every
function in the model file is compiled with `numba.njit(cache=True)`, so helpers may be used;
keep them in the model file: a change in a helper imported from another file is not noticed by
numba's cache (numba issue #1833), a change in the model file always is (see `_build_module`).

The TOML file:

    [model]
    name = "heat_exchanger"
    file = "heat_exchanger.py"        # relative to the TOML
    integrator = "rk4"                # "rk4" | "rk4-substep" | "semi-implicit"
    substep_s = 0.05
    [observer]                        # per-state time constant (s) of the output injection
    t_hot_out = 300.0                 # 0 or absent = off; the state needs a same-named output
    [nominal_inputs]                  # optional, inputs not listed are 0.0
    t_hot_in = 80.0
    [nominal_states]                  # optional, states not listed are 0.0
    [params]
    ua_w_per_k = { nominal = 500.0, unit = "W/K", range = [100.0, 2000.0], about = "..." }

Integrators: "rk4" splits every step into equal RK4 sub-steps no longer than `substep_s`;
"rk4-substep" also shortens them to 1 / (Gershgorin bound of the Jacobian) estimated by finite
differences at the start of each step, so a stiffening state cannot make RK4 unstable (a
model that knows its fastest rate analytically says so in `max_rate`, which then replaces those
n extra derivative evaluations per step; at load it must be at least the finite-difference
Gershgorin bound at the nominal point);
"semi-implicit" is the L-stable second-order Rosenbrock method ROS2 (Verwer et al. 1999) on the
same finite-difference Jacobian, for models with time constants far below the tick.

`load_spec` validates everything and raises `ModelError` naming the model and the field: keys,
names, ranges, and the functions themselves, which are run once at load (nominal parameters,
`[nominal_inputs]`, `[nominal_states]`) in Python, to catch writes outside their arrays, entries
left unwritten and NaN or inf, and then compiled, to catch what numba cannot compile.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from models.base import F64, ModelError
from models.process.checks import _Ctx, check_functions
from models.process.codegen import kernel_source

INTEGRATORS: tuple[str, ...] = ("rk4", "rk4-substep", "semi-implicit")
MODEL_KEYS = frozenset({"name", "file", "integrator", "substep_s"})
TOP_KEYS = frozenset({"model", "observer", "nominal_inputs", "nominal_states", "params"})
PARAM_KEYS = frozenset({"nominal", "unit", "range", "about"})
SUBSTEP_LIMITS = (1e-6, 10.0)
# Set this to put generated model modules (and numba's cache of them) in a chosen directory.
CACHE_ENV = "EDGE_AGENT_MODEL_CACHE"

_Fn = Callable[..., Any]


@dataclass(frozen=True, slots=True, eq=False)
class ModelSpec:
    """A validated, compiled model definition. Arrays are per parameter / input / state."""

    name: str
    source: str
    file: Path
    states: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...]
    nominal: F64
    lo: F64
    hi: F64
    units: tuple[str, ...]
    about: tuple[str, ...]
    integrator: str
    substep_s: float
    observer_tau_s: F64
    nominal_inputs: F64
    nominal_states: F64
    has_initial: bool
    module: ModuleType

    def index(self, param: str) -> int:
        """The position of a parameter in the vector."""
        return self.params.index(param)


def _number(ctx: _Ctx, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(field, f"expected a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise ctx.error(field, "must be finite")
    return f


def _table(ctx: _Ctx, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ctx.error(key, "expected a table")
    return value


def _names(ctx: _Ctx, module: ModuleType, attr: str) -> tuple[str, ...]:
    value = getattr(module, attr, None)
    if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
        raise ctx.error(attr, "missing: expected a tuple of names in the model file")
    if not value and attr != "INPUTS":
        raise ctx.error(attr, "must not be empty")
    seen: set[str] = set()
    for v in value:
        if v in seen:
            raise ctx.error(f"{attr}.{v}", "duplicate name")
        seen.add(v)
    return tuple(value)


def _named_values(
    ctx: _Ctx, table: dict[str, Any], key: str, names: tuple[str, ...], default: float
) -> F64:
    out = np.full(len(names), default)
    for k, v in table.items():
        if k not in names:
            raise ctx.error(f"{key}.{k}", f"unknown name (known: {', '.join(names)})")
        out[names.index(k)] = _number(ctx, f"{key}.{k}", v)
    return out


def _param(ctx: _Ctx, name: str, entry: object) -> tuple[float, float, float, str, str]:
    key = f"params.{name}"
    if not isinstance(entry, dict):
        raise ctx.error(key, "expected a table { nominal = ..., range = [lo, hi] }")
    for k in entry:
        if k not in PARAM_KEYS:
            raise ctx.error(f"{key}.{k}", "unknown key")
    for k in ("nominal", "range"):
        if k not in entry:
            raise ctx.error(f"{key}.{k}", "missing")
    nominal = _number(ctx, f"{key}.nominal", entry["nominal"])
    rng = entry["range"]
    if not isinstance(rng, list) or len(rng) != 2:
        raise ctx.error(f"{key}.range", "expected [lo, hi]")
    lo = _number(ctx, f"{key}.range", rng[0])
    hi = _number(ctx, f"{key}.range", rng[1])
    if not lo < hi:
        raise ctx.error(f"{key}.range", f"lo {lo:g} must be below hi {hi:g}")
    if not lo <= nominal <= hi:
        raise ctx.error(f"{key}.nominal", f"{nominal:g} outside its range [{lo:g}, {hi:g}]")
    unit, about = entry.get("unit", ""), entry.get("about", "")
    if not isinstance(unit, str):
        raise ctx.error(f"{key}.unit", "expected a string")
    if not isinstance(about, str):
        raise ctx.error(f"{key}.about", "expected a string")
    return nominal, lo, hi, unit, about


def _cache_dir(model_file: Path) -> Path:
    """Where the generated module goes: env override, next to the model, or the user cache."""
    env = os.environ.get(CACHE_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(model_file.parent / "__pycache__")
    xdg = os.environ.get("XDG_CACHE_HOME")
    candidates.append((Path(xdg) if xdg else Path.home() / ".cache") / "edge-agent" / "models")
    candidates.append(Path(tempfile.gettempdir()) / "edge-agent-models")
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise ModelError(f"{model_file}: no writable directory for the compiled model")


def _footer() -> str:
    """Engine code appended to the model source."""
    return kernel_source()


def _build_module(ctx: _Ctx, model_file: Path) -> ModuleType:
    """Import model file + engine kernels as one generated module, compiled with cache=True.

    numba caches a function by its source file and validates the cache by that file's stamp,
    but a cached caller does not notice a changed callee. Model functions and the ensemble
    kernel therefore live in one generated file whose name carries a hash of both sources:
    an edited model gets a new file (a fresh compile), an unchanged one reuses the cache.
    Stale generated files are not deleted (a few kB each, plus numba's cache of them).
    The model source comes first and verbatim, so line numbers in errors are the model file's.
    """
    try:
        text = model_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ctx.error("model.file", f"cannot read {model_file}: {exc.strerror}") from exc
    generated = text.rstrip("\n") + "\n\n\n" + _footer()
    # The path is hashed too: a model's compiled cache always lives next to that model.
    digest = hashlib.sha256(f"{model_file}\n{generated}".encode()).hexdigest()[:16]
    modname = f"_edge_model_{ctx.name}_{digest}".replace("-", "_")
    if modname in sys.modules:
        return sys.modules[modname]
    path = _cache_dir(model_file) / f"{modname}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != generated:
        # Atomic replace: a concurrent process never imports a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(generated)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ctx.error("model.file", f"cannot import {model_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[modname]
        raise ctx.error("model.file", f"{type(exc).__name__}: {exc}") from exc
    return module


def parse_spec(data: dict[str, Any], toml_path: Path) -> ModelSpec:
    """Validate a parsed TOML document (`toml_path` locates the model file and names errors)."""
    ctx = _Ctx(toml_path.stem, str(toml_path))
    model_t = data.get("model")
    if isinstance(model_t, dict) and isinstance(model_t.get("name"), str):
        ctx.name = model_t["name"]
    for key in data:
        if key not in TOP_KEYS:
            raise ctx.error(key, f"unknown table (known: {', '.join(sorted(TOP_KEYS))})")
    model = _table(ctx, data, "model")
    for key in model:
        if key not in MODEL_KEYS:
            raise ctx.error(f"model.{key}", "unknown key")
    name = model.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ctx.error("model.name", "missing: expected an identifier-like name")
    ctx.name = name
    file = model.get("file")
    if not isinstance(file, str):
        raise ctx.error(
            "model.file", "missing: expected the model's .py path, relative to the TOML"
        )
    integrator = model.get("integrator", "rk4")
    if integrator not in INTEGRATORS:
        raise ctx.error(
            "model.integrator", f"{integrator!r}: expected one of {', '.join(INTEGRATORS)}"
        )
    substep = _number(ctx, "model.substep_s", model.get("substep_s", 0.05))
    if not SUBSTEP_LIMITS[0] <= substep <= SUBSTEP_LIMITS[1]:
        raise ctx.error("model.substep_s", f"{substep:g} outside {list(SUBSTEP_LIMITS)}")
    params_t = data.get("params")
    if not isinstance(params_t, dict) or not params_t:
        raise ctx.error("params", "missing table")

    model_file = (toml_path.parent / file).resolve()
    ctx.model_file = str(model_file)
    module = _build_module(ctx, model_file)
    states = _names(ctx, module, "STATES")
    inputs = _names(ctx, module, "INPUTS")
    outputs = _names(ctx, module, "OUTPUTS")
    pnames = _names(ctx, module, "PARAMS")
    for pname in params_t:
        if pname not in pnames:
            raise ctx.error(f"params.{pname}", f"unknown parameter (PARAMS of {file})")
    for pname in pnames:
        if pname not in params_t:
            raise ctx.error(f"params.{pname}", "missing")
    rows = [_param(ctx, n, params_t[n]) for n in pnames]
    nominal = np.array([r[0] for r in rows], dtype=np.float64)

    observer = _named_values(ctx, _table(ctx, data, "observer"), "observer", states, 0.0)
    for i, tau in enumerate(observer):
        if tau < 0.0:
            raise ctx.error(f"observer.{states[i]}", "must be >= 0")
        if tau > 0.0 and states[i] not in outputs:
            raise ctx.error(f"observer.{states[i]}", "the state has no output of the same name")
    u_nom = _named_values(ctx, _table(ctx, data, "nominal_inputs"), "nominal_inputs", inputs, 0.0)
    x_nom = _named_values(ctx, _table(ctx, data, "nominal_states"), "nominal_states", states, 0.0)
    has_initial = check_functions(
        ctx,
        module,
        {"STATES": states, "OUTPUTS": outputs},
        {"states": x_nom, "inputs": u_nom, "params": nominal},
    )
    return ModelSpec(
        name=name,
        source=str(toml_path),
        file=model_file,
        states=states,
        inputs=inputs,
        outputs=outputs,
        params=pnames,
        nominal=nominal,
        lo=np.array([r[1] for r in rows]),
        hi=np.array([r[2] for r in rows]),
        units=tuple(r[3] for r in rows),
        about=tuple(r[4] for r in rows),
        integrator=integrator,
        substep_s=substep,
        observer_tau_s=observer,
        nominal_inputs=u_nom,
        nominal_states=x_nom,
        has_initial=has_initial,
        module=module,
    )


def load_spec(toml_path: str | Path) -> ModelSpec:
    """Read, validate and compile a model definition; raises `ModelError` naming the field."""
    path = Path(toml_path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ModelError(f"model {path.stem} ({path}): cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"model {path.stem} ({path}): not valid TOML: {exc}") from exc
    return parse_spec(data, path.resolve())


def python_functions(spec: ModelSpec) -> dict[str, _Fn]:
    """The model's functions as plain Python (for reference runs and debugging)."""
    fns: dict[str, _Fn] = spec.module._engine_python
    return {k: v for k, v in fns.items() if inspect.isfunction(v)}
