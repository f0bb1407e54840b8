"""How the engine's kernels are bound to a model: the code appended to its generated module.

This module owns `kernel_source`: the footer that `models.process.spec._build_module` appends to
a model file, which compiles the model's functions, binds the names the kernels are written
against (`models.process.kernels`), defines the intrinsics the fast path needs and appends the
kernels' source (`models.process.kernels`, `models.process.kernels_fast`), so that the model and
the kernels are compiled together, with `cache=True`, in one file whose name carries their hash.
"""

from __future__ import annotations

import inspect

from models.process.kernels import (
    MAX_SUBSTEPS,
    RK4,
    RK4_SUBSTEP,
    ROS2_GAMMA,
    SEMI_IMPLICIT,
    SETTLE_ITERATIONS,
    _advance_all_arrays,
    _count,
    _initial_all,
    _jacobian,
    _lu_factor,
    _lu_solve,
    _outputs_all,
    _rk4,
    _ros2,
    _settle_all,
)
from models.process.kernels_fast import (
    _advance_all,
    _rk4_one,
    _rk4_two,
    _substeps,
    _substeps_two,
)

# Compiled as their own functions (cache=True) and called from Python.
_KERNELS = (
    _jacobian,
    _lu_factor,
    _lu_solve,
    _rk4,
    _ros2,
    _advance_all,
    _advance_all_arrays,
    _outputs_all,
    _initial_all,
    _settle_all,
)
# Inlined into their caller by numba: their stack scratch must stay in the caller's frame.
_INLINED = (_count, _substeps, _substeps_two, _rk4_one, _rk4_two)

_FOOTER_HEAD = f"""
# ---- appended by models.process.codegen; everything above is the model file, verbatim ----
import inspect as _engine_inspect
import math
import numba as _engine_numba
import numpy as np
import numpy.typing as npt
from models.base import F64

_engine_python = {{
    _k: _v
    for _k, _v in list(globals().items())
    if _engine_inspect.isfunction(_v) and _v.__module__ == __name__
}}
for _k, _v in _engine_python.items():
    globals()[_k] = _engine_numba.njit(
        cache=True, error_model="numpy", fastmath={{"arcp", "contract"}}
    )(_v)
_model_derivative = globals().get("derivative")
_model_output = globals().get("output")
_model_initial = globals().get("initial")
_model_max_rate = globals().get("max_rate")
if _model_max_rate is None:

    def _model_max_rate(x, u, p):
        return -1.0

    _model_max_rate = _engine_numba.njit(cache=True)(_model_max_rate)
# Validated later by `spec`; a missing or malformed name must reach that check, not fail here.
N_STATES, N_INPUTS, N_OUTPUTS, N_PARAMS = (
    len(_v) if isinstance(_v := globals().get(_k), tuple | list) else 0
    for _k in ("STATES", "INPUTS", "OUTPUTS", "PARAMS")
)
RK4 = {RK4}
RK4_SUBSTEP = {RK4_SUBSTEP}
SEMI_IMPLICIT = {SEMI_IMPLICIT}
MAX_SUBSTEPS = {MAX_SUBSTEPS}
ROS2_GAMMA = {ROS2_GAMMA!r}
SETTLE_ITERATIONS = {SETTLE_ITERATIONS}
"""


# numba's own `to_fixed_tuple` fills the tuple in a bounds-checked loop through memory (about
# 1.5 ns per element); these load the elements straight into the tuple value. `_scratch` is an
# array over stack memory (no allocation, no reference count): once everything is inlined,
# LLVM promotes its elements to registers.
_INTRINSICS = """
from numba.core import cgutils as _engine_cgutils
from numba.core import types as _engine_types
from numba.extending import intrinsic as _engine_intrinsic


def _engine_load_tuple(context, builder, ary, tup, base, size):
    out = context.get_constant_undef(tup)
    for i in range(size):
        idx = builder.add(base, context.get_constant(_engine_types.intp, i))
        out = builder.insert_value(out, builder.load(builder.gep(ary.data, [idx])), i)
    return out


@_engine_intrinsic
def _to_tuple(typingctx, array, length):
    \"\"\"The first `length` (a constant) elements of a C-contiguous 1-D array as a tuple.\"\"\"
    if not isinstance(length, _engine_types.IntegerLiteral) or array.ndim != 1:
        return None
    size = int(length.literal_value)
    tup = _engine_types.UniTuple(array.dtype, size)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        base = context.get_constant(_engine_types.intp, 0)
        return _engine_load_tuple(context, builder, ary, tup, base, size)

    return tup(array, length), codegen


@_engine_intrinsic
def _row_tuple(typingctx, array, row, length):
    \"\"\"The first `length` (a constant) elements of row `row` of a C-contiguous 2-D array.\"\"\"
    if (
        not isinstance(length, _engine_types.IntegerLiteral)
        or not isinstance(row, _engine_types.Integer)
        or array.ndim != 2
        or array.layout != "C"
    ):
        return None
    size = int(length.literal_value)
    tup = _engine_types.UniTuple(array.dtype, size)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        r = context.cast(builder, args[1], signature.args[1], _engine_types.intp)
        base = builder.mul(r, builder.extract_value(ary.shape, 1))
        return _engine_load_tuple(context, builder, ary, tup, base, size)

    return tup(array, row, length), codegen


@_engine_intrinsic
def _scratch(typingctx, length):
    \"\"\"A float64 vector of `length` (a constant) elements in the caller's stack frame.\"\"\"
    if not isinstance(length, _engine_types.IntegerLiteral):
        return None
    size = max(int(length.literal_value), 1)
    arrty = _engine_types.Array(_engine_types.float64, 1, "C")

    def codegen(context, builder, signature, args):
        f64 = context.get_value_type(_engine_types.float64)
        ptr = _engine_cgutils.alloca_once(builder, f64, size=size)
        ary = context.make_array(arrty)(context, builder)
        item = context.get_constant(_engine_types.intp, 8)
        context.populate_array(
            ary, data=ptr, shape=[context.get_constant(_engine_types.intp, size)],
            strides=[item], itemsize=item, meminfo=None,
        )
        return ary._getvalue()

    return arrty(length), codegen
"""


def kernel_source() -> str:
    """The engine code appended to every generated model module."""
    parts = [_FOOTER_HEAD, _INTRINSICS]
    parts += [inspect.getsource(fn) for fn in (*_INLINED, *_KERNELS)]
    inlined = ", ".join(repr(fn.__name__) for fn in _INLINED)
    names = ", ".join(repr(fn.__name__) for fn in _KERNELS)
    # nogil: the caller may run a large ensemble in a worker thread without stalling others.
    parts.append(
        f"for _k in ({inlined}):\n"
        "    globals()[_k] = _engine_numba.njit(\n"
        "        inline='always', error_model='numpy', fastmath={'contract'}\n"
        "    )(globals()[_k])\n"
        f"for _k in ({names}):\n"
        "    globals()[_k] = _engine_numba.njit(\n"
        "        cache=True, nogil=True, error_model='numpy', fastmath={'contract'}\n"
        "    )(globals()[_k])\n"
    )
    return "\n\n".join(parts)
