"""Explicit parameter variants: rows of named parameters, variants files (CSV, TOML), errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.compare import StepInfo
from edge_agent.learn import Learner
from models.base import ModelError
from models.process.engine import Ensemble
from models.process.spec import load_spec
from models.process.units import UNITS_DIR
from models.process.variants import load_variants, params_from_rows

LOOP = load_spec(UNITS_DIR / "water_loop.toml")
EFF = LOOP.index("pump_efficiency_frac")
H0 = LOOP.index("head_shutoff_m")


def test_rows_take_nominal_for_missing_names() -> None:
    """Each row sets only the parameters it names; the rest keep their nominal values."""
    rows = [{}, {"pump_efficiency_frac": 0.4}, {"head_shutoff_m": 30, "pump_efficiency_frac": 0.5}]
    ps = params_from_rows(LOOP, rows)
    assert ps.shape == (3, len(LOOP.params))
    assert np.array_equal(ps[0], LOOP.nominal)
    assert ps[1, EFF] == 0.4 and ps[1, H0] == LOOP.nominal[H0]
    assert ps[2, EFF] == 0.5 and ps[2, H0] == 30.0
    others = [j for j in range(len(LOOP.params)) if j not in (EFF, H0)]
    assert np.array_equal(ps[:, others], np.tile(LOOP.nominal[others], (3, 1)))


def test_ensemble_from_rows_runs_those_variants() -> None:
    """`Ensemble.from_rows` steps exactly the listed variants: same as the matrix route."""
    rows = [{"pump_efficiency_frac": 0.3}, {"pump_efficiency_frac": 0.6}]
    ens = Ensemble.from_rows(LOOP, rows)
    same = Ensemble(LOOP, params_from_rows(LOOP, rows))
    u = np.array([80.0, 100.0, 80.0, 1.5])
    y, y2 = ens.step(u, 0.1).copy(), same.step(u, 0.1)
    assert np.array_equal(y, y2)
    assert ens.params[:, EFF].tolist() == [0.3, 0.6]
    assert y[0, 4] > y[1, 4]  # the less efficient pump draws more current


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"pump_efficiency_frac": 0.4}, {"pump_efficiency_frac": 0.95}],
         r"^model water_loop: variants\[1\]\.pump_efficiency_frac: 0\.95 outside its range "
         r"\[0\.1, 0\.9\]$"),
        ([{"pump_effciency": 0.4}],
         r"^model water_loop: variants\[0\]\.pump_effciency: unknown parameter \(known: "),
        ([{}, {}, {"head_shutoff_m": "high"}],
         r"^model water_loop: variants\[2\]\.head_shutoff_m: expected a number, got 'high'$"),
        ([{"head_shutoff_m": float("nan")}],
         r"^model water_loop: variants\[0\]\.head_shutoff_m: nan outside its range"),
        ([], r"^model water_loop: variants: the list is empty$"),
    ],
    ids=["out_of_range", "unknown_name", "not_a_number", "nan", "empty"],
)  # fmt: skip
def test_bad_rows_name_model_variant_and_parameter(
    rows: list[dict[str, object]], message: str
) -> None:
    """A bad row raises ModelError naming the model, the variant index and the parameter."""
    with pytest.raises(ModelError, match=message):
        params_from_rows(LOOP, rows)


CSV = """\
# pump variants from the design study
variant,pump_efficiency_frac,head_shutoff_m
design,0.45,
worn impeller,0.40,30.5

low head,,28
"""

TOML = """\
[[variant]]
label = "design"

[[variant]]
label = "worn impeller"
pump_efficiency_frac = 0.40
head_shutoff_m = 30.5

[[variant]]
head_shutoff_m = 28
"""


@pytest.mark.parametrize(("name", "text"), [("v.csv", CSV), ("v.toml", TOML)])
def test_variants_file_is_read(tmp_path: Path, name: str, text: str) -> None:
    """CSV and TOML variants files give the same matrix: labels, comments and blank lines
    skipped, empty cells and absent keys nominal."""
    path = tmp_path / name
    path.write_text(text)
    ps = load_variants(path, LOOP)
    assert ps.shape == (3, len(LOOP.params))
    assert ps[:, EFF].tolist() == [0.45, 0.40, LOOP.nominal[EFF]]
    assert ps[:, H0].tolist() == [LOOP.nominal[H0], 30.5, 28.0]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("v.csv", "pump_efficiency_frac,colour\n0.4,red\n",
         r"v\.csv: line 1: column 'colour' is not a parameter"),
        ("v.csv", "pump_efficiency_frac,head_shutoff_m\n0.4\n",
         r"v\.csv: line 2: 1 cells, the header has 2"),
        ("v.csv", "variant,pump_efficiency_frac\na,0.4\nb,0.99\n",
         r"^model water_loop: variants\[1\]\.pump_efficiency_frac: 0\.99 outside its range "
         r"\[0\.1, 0\.9\] \(v\.csv line 3, 'b'\)$"),
        ("v.csv", "head_shutoff_m\n31\nabc\n",
         r"variants\[1\]\.head_shutoff_m: expected a number, got 'abc' \(v\.csv line 3\)"),
        ("v.csv", "# only a comment\n", r"v\.csv: no header row"),
        ("v.csv", "head_shutoff_m\n", r"variants: the list is empty"),
        ("v.toml", "[[variant]]\nhead_shutoff_m = 99.0\n",
         r"variants\[0\]\.head_shutoff_m: 99 outside its range \[20, 45\] "
         r"\(v\.toml \[\[variant\]\] #1\)"),
        ("v.toml", "[variants]\nx = 1\n", r"v\.toml: expected only \[\[variant\]\] tables"),
        ("v.toml", "[[variant]]\nlabel = 3\n", r"variant\[0\]\.label: expected a string"),
        ("v.toml", "[[variant]\n", r"v\.toml: not valid TOML"),
        ("v.json", "{}", r"v\.json: unknown format '\.json'; expected a \.csv or \.toml file"),
    ],
    ids=["unknown_column", "short_row", "out_of_range", "not_a_number", "no_header",
         "no_rows", "toml_out_of_range", "toml_bad_table", "toml_label", "toml_syntax",
         "unknown_suffix"],
)  # fmt: skip
def test_bad_variants_file_is_a_clear_error(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    """Every problem in a variants file is a ModelError naming the model and where it is."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ModelError, match=message) as err:
        load_variants(path, LOOP)
    assert str(err.value).startswith("model water_loop: ")


def test_missing_variants_file(tmp_path: Path) -> None:
    """A variants file that cannot be read is a ModelError naming the file."""
    with pytest.raises(ModelError, match=r"variants file .*nope\.csv: cannot read"):
        load_variants(tmp_path / "nope.csv", LOOP)


def test_learner_runs_listed_variants(tmp_path: Path) -> None:
    """The Learner takes an explicit variant list: exactly those rows, parameters equal in
    every row held, the varied ones reported, and it weighs the variant the plant matches."""
    path = tmp_path / "v.csv"
    path.write_text(
        "pump_efficiency_frac,head_shutoff_m\n"
        + "".join(f"{e:.3f},{h:.1f}\n" for e in (0.3, 0.45, 0.6) for h in (30.0, 32.0, 34.0))
    )
    ps = load_variants(path, LOOP)
    sigma = np.array([0.3, 0.015, 0.002, 0.06, 0.037, 0.09])
    learner = Learner(LOOP, variants=1, vary=list(LOOP.params), sigma=sigma, params=ps)
    assert learner.ensemble.n == 9
    assert set(learner.calibrator.varied) == {"pump_efficiency_frac", "head_shutoff_m"}
    assert sorted(LOOP.params[i] for i in learner.varied) == sorted(learner.calibrator.varied)
    # The plant is variant 4 (0.45, 32.0): its own outputs, tick after tick.
    plant = Ensemble(LOOP, ps[4])
    u = np.array([85.0, 100.0, 80.0, 1.5])
    plant.reset(u, np.full(len(LOOP.outputs), np.nan))
    valid = np.ones(len(LOOP.outputs), dtype=bool)
    for k in range(300):
        y = plant.step(u, 0.1)[0].copy()
        learner.tick(StepInfo(0.1 * k, u, 0.1 if k else 0.0, y, valid, k == 0))
    mean, _ = learner.calibrator.mean_std()
    assert abs(mean[EFF] - 0.45) < 0.02 and abs(mean[H0] - 32.0) < 0.5
