"""A Digital Original exported as an FMI 2.0 co-simulation FMU, run through fmpy.

This module owns loading and validating an FMU and driving one instance of it as a
`models.base.ProcessModel`. It does not own the tag mapping: the FMU's input and output
variable names are the model's `input_names` and `output_names`, mapped to tags by the
agent's config like any other model's. fmpy is the optional extra `fmu`; it is imported here
only, so the rest of the agent runs without it.

Load (`FmuModel.load`) checks everything that can be checked before the first tick and raises
`ModelError` naming the file and the variable or field: not a ZIP/FMU, FMI version other than
2.0, no co-simulation interface, no binary for this platform, unknown variable, wrong
causality, a type other than Real, a start value the FMU does not let us set. It then extracts
the FMU into a private temporary directory, instantiates it once and initialises it.

Tick path (`step`): inputs are copied into a preallocated C array and set with one
`fmi2SetReal` by cached value references, then `fmi2DoStep(t, dt)`, then one `fmi2GetReal`
into a preallocated array. A step that the FMU refuses (status discard, error or fatal) never
raises: it returns NaN outputs and counts `failures`. After such a status FMI 2.0 allows only
reset or free, so the next `step` re-initialises the instance from the last good outputs (the
same rule as `reset`) and counts `recoveries`; until that succeeds every step returns NaN.
After fmi2Fatal nothing but freeing the instance is allowed, so the model stays NaN (counting
failures) until it is loaded again.
`dt <= 0` sets the inputs and reads the outputs without a `doStep` (FMI 2.0 requires a
positive communication step).

Start-value rule (`reset`): the instance is reset and initialised again with
1. the `start_values` given at load (parameters or start values, set at every initialisation);
2. for each output `y` with a finite measured value: the FMU's Real parameter `y_start` if it
   has one, otherwise the start value of `y` itself if the FMU declares it settable
   (`initial="exact"` or `"approx"`); an output with neither starts where the FMU's own
   initialisation puts it (`start_rules` says which applies to each output);
3. the finite measured inputs.
`observe` is a no-op: FMI has no observer hook, so an FMU Digital Original runs open loop
between resets.

FMU log messages go to structlog (event "fmu message"): fmpy formats them in a process-wide
native proxy, and this module points that proxy at structlog the first time an FMU is loaded.
Debug logging is switched on only for the standard status categories (`logStatusWarning`,
`logStatusDiscard`, `logStatusError`, `logStatusFatal`) the FMU declares, so a failing step
says why without the FMU logging on every step.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from xml.etree import ElementTree

import numpy as np
import structlog

from models.base import F64, ModelError

log = structlog.get_logger(__name__)

_STATUS = ("ok", "warning", "discard", "error", "fatal", "pending")
_FATAL = 4
_SETTABLE_INITIAL = ("exact", "approx")
# The log categories FMI 2.0 recommends for messages with a non-OK status.
_STATUS_CATEGORIES = ("logStatusWarning", "logStatusDiscard", "logStatusError", "logStatusFatal")


def _import_fmpy() -> Any:
    """fmpy is an optional extra; a missing install is a model error with the fix in it."""
    try:
        import fmpy  # noqa: PLC0415  # optional extra, imported only when an FMU is used
        import fmpy.fmi2  # noqa: PLC0415
    except ImportError as exc:
        raise ModelError("FMU models need fmpy: install the extra `edge-agent[fmu]`") from exc
    return fmpy


_logger_installed: list[Any] = []  # keeps the ctypes callback objects alive for the process


def _on_fmu_message(
    _env: int | None, instance: bytes | None, status: int, category: bytes | None, msg: bytes | None
) -> None:
    """Called by the FMU (through fmpy's formatting proxy) for each log message."""
    level = "info" if status <= 0 else ("warning" if status <= 2 else "error")
    getattr(log, level)(
        "fmu message",
        instance=(instance or b"").decode("utf-8", "replace"),
        status=_STATUS[status] if 0 <= status < len(_STATUS) else str(status),
        category=(category or b"").decode("utf-8", "replace"),
        text=(msg or b"").decode("utf-8", "replace"),
    )


def _callbacks(fmpy: Any) -> Any:
    """The callback struct every instance gets, with log messages routed to structlog."""
    if not _logger_installed:
        fmi2 = fmpy.fmi2
        cb = fmi2.fmi2CallbackFunctions()
        cb.logger = fmi2.fmi2CallbackLoggerTYPE(_on_fmu_message)
        cb.allocateMemory = fmi2.fmi2CallbackAllocateMemoryTYPE(fmpy.calloc)
        cb.freeMemory = fmi2.fmi2CallbackFreeMemoryTYPE(fmpy.free)
        try:
            from fmpy.logging import addLoggerProxy  # noqa: PLC0415  # optional extra

            # The FMU calls the logger with printf-style varargs that ctypes cannot receive;
            # the proxy formats them natively and calls our logger with the finished text.
            addLoggerProxy(ctypes.byref(cb))
        except (ImportError, OSError, AttributeError):
            log.warning("fmu log proxy unavailable")
        _logger_installed.append(cb)
    return _logger_installed[0]


def _fail(path: Path, what: str) -> ModelError:
    return ModelError(f"{path}: {what}")


def _read_description(fmpy: Any, path: Path) -> Any:
    """Read and validate the model description; every way it can fail becomes a ModelError."""
    if not path.is_file():
        raise _fail(path, "no such file")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "not an FMU (an FMU is a ZIP archive with a modelDescription.xml)")
    try:
        with zipfile.ZipFile(path) as zf:
            if "modelDescription.xml" not in zf.namelist():
                raise _fail(path, "not an FMU: modelDescription.xml missing from the archive")
            root = ElementTree.fromstring(zf.read("modelDescription.xml"))
    except (zipfile.BadZipFile, OSError, ElementTree.ParseError) as exc:
        raise _fail(path, f"modelDescription.xml: not readable ({exc})") from exc
    # Checked before fmpy parses the file, so an FMI 1.0 or 3.0 FMU gets this message and
    # not a schema error about FMI 2.0 elements.
    version = root.get("fmiVersion")
    if version != "2.0":
        raise _fail(
            path, f"modelDescription.xml fmiVersion: {version} is not supported (need FMI 2.0)"
        )
    try:
        md = fmpy.read_model_description(str(path))
    except Exception as exc:  # fmpy raises bare Exception and lxml errors for bad XML
        raise _fail(path, f"modelDescription.xml: invalid ({exc})") from exc
    if md.coSimulation is None:
        raise _fail(
            path,
            "modelDescription.xml CoSimulation: missing (model exchange only); "
            "export the FMU for co-simulation",
        )
    platforms = fmpy.supported_platforms(str(path))
    if fmpy.platform not in platforms:
        raise _fail(
            path,
            f"binaries/{fmpy.platform}: missing (the FMU has binaries for "
            f"{', '.join(platforms) or 'no platform'})",
        )
    return md


def _pick(
    path: Path, by_name: Mapping[str, Any], names: Sequence[str] | None, causality: str
) -> list[Any]:
    """The requested variables, checked for existence, causality and type (default: all)."""
    if names is None:
        chosen = [v for v in by_name.values() if v.causality == causality]
        if causality == "output":
            # Non-Real outputs (counters, flags) cannot be compared with float tags: skip them.
            chosen = [v for v in chosen if v.type == "Real"]
    else:
        if len(set(names)) != len(names):
            raise _fail(path, f"{causality}s: duplicate names in {list(names)}")
        chosen = []
        for name in names:
            var = by_name.get(name)
            if var is None:
                raise _fail(path, f"variable {name!r}: not in the FMU's modelDescription.xml")
            chosen.append(var)
    for var in chosen:
        if var.causality != causality:
            raise _fail(
                path, f"variable {var.name!r}: causality is {var.causality}, expected {causality}"
            )
        if var.type != "Real":
            raise _fail(path, f"variable {var.name!r}: type {var.type} is not supported (Real)")
    if not chosen:
        raise _fail(path, f"{causality}s: the FMU has no Real {causality} variables")
    return chosen


def _settable_start(var: Any) -> bool:
    """True when FMI 2.0 lets the importer set `var` before initialisation."""
    return bool(
        var.type == "Real"
        and var.variability != "constant"
        and var.causality != "independent"
        and (var.causality in ("parameter", "input") or var.initial in _SETTABLE_INITIAL)
    )


class FmuModel:
    """An FMI 2.0 co-simulation FMU as a Digital Original (implements `ProcessModel`).

    Build with `FmuModel.load`. One FMU instance per object; not thread-safe. Close it
    (`close`, `aclose` or `with`) to terminate and free the instance and delete the extracted
    files. `failures` counts steps the FMU refused, `recoveries` the re-initialisations after
    them.
    """

    def __init__(
        self,
        path: Path,
        fmpy: Any,
        *,
        md: Any,
        inputs: list[Any],
        outputs: list[Any],
        start_values: dict[int, float],
        output_starts: list[int | None],
        start_rules: dict[str, str],
    ) -> None:
        self._path = path
        self._inputs = tuple(v.name for v in inputs)
        self._outputs = tuple(v.name for v in outputs)
        self.start_rules = start_rules
        self._start_vr = np.array(list(start_values), dtype=np.uint32)
        self._start_val = np.array(list(start_values.values()), dtype=np.float64)
        self._out_start_vr = output_starts
        n_in, n_out = len(inputs), len(outputs)
        # Preallocated C arrays; the NumPy views let the tick path copy without allocating.
        self._in_vr = (ctypes.c_uint * n_in)(*(v.valueReference for v in inputs))
        self._out_vr = (ctypes.c_uint * n_out)(*(v.valueReference for v in outputs))
        self._in_buf = (ctypes.c_double * n_in)()
        self._out_buf = (ctypes.c_double * n_out)()
        self._in_view = np.ctypeslib.as_array(self._in_buf)
        self._out_view = np.ctypeslib.as_array(self._out_buf)
        self._n_in = n_in
        self._n_out = n_out
        self._nan = np.full(n_out, np.nan)
        self._last_good = np.full(n_out, np.nan)
        self._t = 0.0
        self._broken = False
        self._fatal = False
        self._closed = False
        self.failures = 0
        self.recoveries = 0
        self._call_error: type[Exception] = fmpy.fmi1.FMICallException
        self._unzip = Path(tempfile.mkdtemp(prefix="fmu-"))
        self._fmu: Any = None
        try:
            fmpy.extract(str(path), str(self._unzip))
            cwd = os.getcwd()
            try:
                slave = fmpy.fmi2.FMU2Slave(
                    guid=md.guid,
                    unzipDirectory=str(self._unzip),
                    modelIdentifier=md.coSimulation.modelIdentifier,
                    instanceName=md.coSimulation.modelIdentifier,
                )
            finally:
                # fmpy changes into the binary's directory to load it and stays there when
                # the load fails; that directory is deleted on close.
                os.chdir(cwd)
            # Debug logging only for the standard status categories the FMU declares, so
            # its warnings and errors reach the log without per-step chatter.
            declared = {c.name for c in md.logCategories}
            categories = [c for c in _STATUS_CATEGORIES if c in declared]
            slave.instantiate(callbacks=_callbacks(fmpy), loggingOn=bool(categories))
            self._fmu = slave
            if categories:
                slave.setDebugLogging(True, categories)
            self._c = slave.component
            self._set_real = slave.fmi2SetReal
            self._get_real = slave.fmi2GetReal
            self._do_step = slave.fmi2DoStep
            self._initialise(np.full(n_in, np.nan), np.full(n_out, np.nan), first=True)
        except ModelError:
            self.close()
            raise
        except Exception as exc:  # fmpy raises bare Exception for a library it cannot load
            self.close()
            raise _fail(path, f"cannot instantiate and initialise the FMU ({exc})") from exc

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        start_values: Mapping[str, float] | None = None,
    ) -> FmuModel:
        """Validate the FMU at `path`, instantiate and initialise it once.

        `inputs`/`outputs` name the FMU variables the model is driven with and predicts
        (default: all inputs, all Real outputs), in that order. `start_values` are set at every
        initialisation (parameters, or variables whose start value the FMU lets us set).
        """
        fmpy = _import_fmpy()
        p = Path(path)
        md = _read_description(fmpy, p)
        by_name = {v.name: v for v in md.modelVariables}
        ins = _pick(p, by_name, inputs, "input")
        outs = _pick(p, by_name, outputs, "output")
        starts: dict[int, float] = {}
        for name, value in (start_values or {}).items():
            var = by_name.get(name)
            if var is None:
                raise _fail(p, f"start_values.{name}: not a variable of the FMU")
            if not _settable_start(var):
                raise _fail(
                    p,
                    f"start_values.{name}: the FMU does not allow setting it "
                    f"(type {var.type}, causality {var.causality}, variability "
                    f"{var.variability}, initial {var.initial})",
                )
            if not math.isfinite(value):
                raise _fail(p, f"start_values.{name}: {value} is not finite")
            starts[var.valueReference] = float(value)
        out_starts: list[int | None] = []
        rules: dict[str, str] = {}
        for var in outs:
            param = by_name.get(f"{var.name}_start")
            if param is not None and param.causality == "parameter" and _settable_start(param):
                out_starts.append(param.valueReference)
                rules[var.name] = param.name
            elif _settable_start(var):
                out_starts.append(var.valueReference)
                rules[var.name] = f"{var.name} (start)"
            else:
                out_starts.append(None)
                rules[var.name] = "none"
        model = cls(
            p,
            fmpy,
            md=md,
            inputs=ins,
            outputs=outs,
            start_values=starts,
            output_starts=out_starts,
            start_rules=rules,
        )
        log.info(
            "fmu loaded",
            file=str(p),
            model=md.modelName,
            inputs=model.input_names,
            outputs=model.output_names,
        )
        return model

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def extracted_dir(self) -> Path:
        """Where the FMU was extracted (deleted by `close`)."""
        return self._unzip

    @property
    def time(self) -> float:
        """The FMU's current communication point (seconds since the last initialisation)."""
        return self._t

    def _check(self, arr: F64, n: int, what: str) -> F64:
        if self._closed:
            raise ModelError(f"{self._path}: the FMU model is closed")
        a = np.asarray(arr, dtype=np.float64)
        if a.shape != (n,):
            raise ModelError(f"{self._path}: {what}: expected shape ({n},), got {a.shape}")
        return a

    def _set(self, vrs: Sequence[int], values: Sequence[float]) -> None:
        n = len(vrs)
        if n:
            self._set_real(self._c, (ctypes.c_uint * n)(*vrs), n, (ctypes.c_double * n)(*values))

    def _initialise(self, inputs: F64, outputs: F64, *, first: bool = False) -> None:
        """(Re-)initialise with the start-value rule; raises fmpy's error if the FMU refuses."""
        fmu = self._fmu
        if not first:
            fmu.reset()
        fmu.setupExperiment(startTime=0.0)
        self._set(self._start_vr.tolist(), self._start_val.tolist())
        known = [
            (vr, float(y))
            for vr, y in zip(self._out_start_vr, outputs, strict=True)
            if vr is not None and math.isfinite(y)
        ]
        self._set([vr for vr, _ in known], [y for _, y in known])
        ok = np.flatnonzero(np.isfinite(inputs))
        self._set([self._in_vr[int(i)] for i in ok], inputs[ok].tolist())
        fmu.enterInitializationMode()
        fmu.exitInitializationMode()
        self._t = 0.0
        self._get_real(self._c, self._out_vr, self._n_out, self._out_buf)
        self._last_good = self._out_view.copy()
        self._broken = False

    def reset(self, inputs: F64, outputs: F64) -> None:
        """Re-initialise from measured inputs and outputs (NaN = unknown), see the module rule.

        Never raises for an FMU that refuses: counts a failure, and the next `step` retries.
        """
        u = self._check(inputs, self._n_in, "inputs")
        y = self._check(outputs, self._n_out, "outputs")
        if self._fatal:
            self.failures += 1
            return
        try:
            self._initialise(u, y)
        except self._call_error as exc:
            self._on_failure("reset", exc)
            # Retry from the measurements, not from the predictions before the reset.
            self._last_good = y.copy()

    def _on_failure(self, where: str, exc: Exception) -> None:
        self.failures += 1
        if not self._broken:
            log.warning(
                "fmu step failed", file=str(self._path), where=where, t=self._t, error=str(exc)
            )
        self._broken = True
        # After fmi2Fatal FMI 2.0 allows nothing but freeing the instance: no recovery.
        self._fatal = self._fatal or getattr(exc, "status", 0) >= _FATAL

    def step(self, inputs: F64, dt: float) -> F64:
        """Advance by `dt` seconds with `inputs` held; NaN outputs if the FMU refuses."""
        u = self._check(inputs, self._n_in, "inputs")
        if self._broken:
            if self._fatal:
                self.failures += 1
                return self._nan.copy()
            try:
                self._initialise(u, self._last_good)
            except self._call_error as exc:
                self._on_failure("recover", exc)
                return self._nan.copy()
            self.recoveries += 1
            log.info("fmu recovered", file=str(self._path), failures=self.failures)
        self._in_view[:] = u
        try:
            self._set_real(self._c, self._in_vr, self._n_in, self._in_buf)
            if dt > 0.0:
                self._do_step(self._c, self._t, dt, 1)
                self._t += dt
            self._get_real(self._c, self._out_vr, self._n_out, self._out_buf)
        except self._call_error as exc:
            self._on_failure("step", exc)
            return self._nan.copy()
        np.copyto(self._last_good, self._out_view)
        return self._last_good.copy()

    def observe(self, outputs: F64, dt: float) -> None:
        """No-op: FMI has no observer hook; the FMU runs open loop between resets."""

    def close(self) -> None:
        """Terminate and free the instance, delete the extracted files; idempotent."""
        if self._closed:
            return
        self._closed = True
        fmu, self._fmu = self._fmu, None
        if fmu is not None:
            try:
                if not self._broken:
                    fmu.terminate()
            except self._call_error as exc:
                log.warning("fmu terminate failed", file=str(self._path), error=str(exc))
            finally:
                fmu.freeInstance()
        shutil.rmtree(self._unzip, ignore_errors=True)

    async def aclose(self) -> None:
        """`close` for async owners (it does not block for long: no I/O but file deletion)."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
