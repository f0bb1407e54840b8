"""Parameter variants of an authored model: sampled from the declared ranges or listed explicitly.

This module owns how an ensemble's (N, P) parameter matrix is made and checked; running the
variants is `models.process.engine.Ensemble`. Three ways in:

- `sample_params(spec, n)`: N variants drawn inside the declared ranges, row 0 nominal;
- `params_from_rows(spec, rows)`: an explicit list, one mapping of parameter name -> value per
  variant; a parameter a row leaves out takes its nominal value;
- `load_variants(path, spec)`: the same list read from a variants file (below).

Every value is checked against the parameter's declared range; an error is a `ModelError` that
names the model, the variant (index from 0, and the file's line or table when read from a
file) and the parameter.

Variants file, CSV (`.csv`): a header row of parameter names (any subset of the model's, any
order), then one row per variant. An optional column `variant` holds a label that only appears
in error messages. An empty cell takes the nominal value; lines starting with `#` are comments.

    variant,pump_efficiency_frac,head_shutoff_m
    design,0.45,
    worn impeller,0.40,30.5

Variants file, TOML (`.toml`): an array of tables `[[variant]]`, each with parameter names as
keys (numbers) and an optional `label` (a string).

    [[variant]]
    label = "design"
    [[variant]]
    label = "worn impeller"
    pump_efficiency_frac = 0.40
    head_shutoff_m = 30.5
"""

from __future__ import annotations

import csv
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.base import F64, ModelError
from models.process.spec import ModelSpec

LABEL_CSV = "variant"
LABEL_TOML = "label"
MAX_VARIANTS = 10_000


def check_params(spec: ModelSpec, params: npt.ArrayLike) -> F64:
    """Validate an explicit (N, P) variant matrix: shape, finite, inside the declared ranges."""
    ps = np.array(params, dtype=np.float64, ndmin=2, order="C")
    if ps.ndim != 2 or ps.shape[1] != len(spec.params) or ps.shape[0] < 1:
        raise ModelError(
            f"model {spec.name}: params: expected shape (N, {len(spec.params)}), got {ps.shape}"
        )
    bad = ~np.isfinite(ps) | (ps < spec.lo) | (ps > spec.hi)
    if bad.any():
        v, j = (int(i) for i in np.argwhere(bad)[0])
        raise ModelError(
            f"model {spec.name}: params[{v}].{spec.params[j]}: {ps[v, j]:g} outside its range "
            f"[{spec.lo[j]:g}, {spec.hi[j]:g}]"
        )
    return ps


def sample_params(
    spec: ModelSpec, n: int, seed: int = 0, *, spread: float = 1.0, latin: bool = False
) -> F64:
    """N variants inside the declared ranges; row 0 is nominal.

    Each parameter is drawn from [nominal - spread (nominal - lo), nominal + spread (hi -
    nominal)], uniformly or (`latin=True`) by Latin hypercube over the other N - 1 rows.
    """
    if n < 1:
        raise ModelError(f"model {spec.name}: sample_params: n must be >= 1, got {n}")
    if not 0.0 <= spread <= 1.0:
        raise ModelError(f"model {spec.name}: sample_params: spread must be in [0, 1]")
    rng = np.random.default_rng(seed)
    lo = spec.nominal - spread * (spec.nominal - spec.lo)
    hi = spec.nominal + spread * (spec.hi - spec.nominal)
    m, k = n - 1, len(spec.params)
    if latin and m > 0:
        strata = np.stack([rng.permutation(m) for _ in range(k)], axis=1)
        unit = (strata + rng.random((m, k))) / m
    else:
        unit = rng.random((m, k))
    out = np.empty((n, k))
    out[0] = spec.nominal
    out[1:] = lo + unit * (hi - lo)
    return np.clip(out, spec.lo, spec.hi)


def params_from_rows(
    spec: ModelSpec,
    rows: Sequence[Mapping[str, object]],
    *,
    where: Sequence[str] | None = None,
) -> F64:
    """The (N, P) matrix of an explicit variant list; names a row leaves out take nominal.

    `where[i]` (optional) says where row i came from, for error messages (a file's line).
    """
    if not rows:
        raise ModelError(f"model {spec.name}: variants: the list is empty")
    if len(rows) > MAX_VARIANTS:
        raise ModelError(
            f"model {spec.name}: variants: {len(rows)} variants, at most {MAX_VARIANTS}"
        )
    index = {name: j for j, name in enumerate(spec.params)}
    out = np.tile(spec.nominal, (len(rows), 1))
    for v, row in enumerate(rows):
        src = f" ({where[v]})" if where else ""
        for name, value in row.items():
            at = f"variants[{v}].{name}"
            j = index.get(name)
            if j is None:
                raise ModelError(
                    f"model {spec.name}: {at}: unknown parameter{src} "
                    f"(known: {', '.join(spec.params)})"
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ModelError(f"model {spec.name}: {at}: expected a number, got {value!r}{src}")
            f = float(value)
            if not (math.isfinite(f) and spec.lo[j] <= f <= spec.hi[j]):
                raise ModelError(
                    f"model {spec.name}: {at}: {f:g} outside its range "
                    f"[{spec.lo[j]:g}, {spec.hi[j]:g}]{src}"
                )
            out[v, j] = f
    return out


def load_variants(path: str | Path, spec: ModelSpec) -> F64:
    """Read a variants file (`.csv` or `.toml`, see the module docstring): the (N, P) matrix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in {".csv", ".toml"}:
        raise ModelError(
            f"model {spec.name}: variants file {p}: unknown format {p.suffix!r}; "
            "expected a .csv or .toml file"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ModelError(f"model {spec.name}: variants file {p}: cannot read: {reason}") from exc
    rows, where = _csv_rows(text, p, spec) if suffix == ".csv" else _toml_rows(text, p, spec)
    return params_from_rows(spec, rows, where=where)


def _csv_rows(text: str, path: Path, spec: ModelSpec) -> tuple[list[dict[str, object]], list[str]]:
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ModelError(f"model {spec.name}: variants file {path}: no header row")
    header = [h.strip() for h in next(csv.reader([lines[0][1]]))]
    known = set(spec.params) | {LABEL_CSV}
    for h in header:
        if h not in known:
            raise ModelError(
                f"model {spec.name}: variants file {path}: line {lines[0][0]}: column {h!r} is "
                f"not a parameter (known: {', '.join(spec.params)}; `{LABEL_CSV}` for a label)"
            )
    if len(set(header)) != len(header):
        raise ModelError(f"model {spec.name}: variants file {path}: duplicate column in header")
    rows: list[dict[str, object]] = []
    where: list[str] = []
    for n, line in lines[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != len(header):
            raise ModelError(
                f"model {spec.name}: variants file {path}: line {n}: {len(cells)} cells, "
                f"the header has {len(header)}"
            )
        row: dict[str, object] = {}
        label = ""
        for name, cell in zip(header, cells, strict=True):
            if name == LABEL_CSV:
                label = cell
            elif cell:
                try:
                    row[name] = float(cell)
                except ValueError:
                    row[name] = cell  # reported by params_from_rows, with the variant
        rows.append(row)
        where.append(f"{path.name} line {n}" + (f", {label!r}" if label else ""))
    return rows, where


def _toml_rows(text: str, path: Path, spec: ModelSpec) -> tuple[list[dict[str, object]], list[str]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"model {spec.name}: variants file {path}: not valid TOML: {exc}") from exc
    extra = [k for k in data if k != "variant"]
    tables = data.get("variant")
    if extra or not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ModelError(
            f"model {spec.name}: variants file {path}: expected only [[variant]] tables"
        )
    rows: list[dict[str, object]] = []
    where: list[str] = []
    for i, table in enumerate(tables):
        label = table.get(LABEL_TOML, "")
        if not isinstance(label, str):
            raise ModelError(
                f"model {spec.name}: variants file {path}: variant[{i}].{LABEL_TOML}: "
                "expected a string"
            )
        rows.append({k: v for k, v in table.items() if k != LABEL_TOML})
        where.append(f"{path.name} [[variant]] #{i + 1}" + (f", {label!r}" if label else ""))
    return rows, where
