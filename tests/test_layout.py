"""The dependency direction of the packages, and that generic names resolve inside the repo."""

from __future__ import annotations

import ast
from pathlib import Path

import drivers
import models

ROOT = Path(__file__).resolve().parents[1]


def imported_top_levels(pkg: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / pkg).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_drivers_and_models_are_independent() -> None:
    """drivers and models import neither edge_agent nor each other (nor hil)."""
    assert not imported_top_levels("drivers") & {"edge_agent", "models", "hil"}
    assert not imported_top_levels("models") & {"edge_agent", "drivers", "hil"}


def test_hil_never_imports_edge_agent() -> None:
    """The rig is the plant's side of the wire and knows nothing of the agent."""
    assert "edge_agent" not in imported_top_levels("hil")


def test_generic_package_names_resolve_inside_the_repository() -> None:
    """`drivers` and `models` are this repository's, not a same-named installed package."""
    assert Path(drivers.__file__).resolve().parent == ROOT / "drivers"
    assert Path(models.__file__).resolve().parent == ROOT / "models"


def test_every_module_has_a_docstring() -> None:
    """Each module says what it is for."""
    missing = []
    for pkg in ("edge_agent", "drivers", "models", "hil"):
        for path in (ROOT / pkg).rglob("*.py"):
            if ast.get_docstring(ast.parse(path.read_text())) is None:
                missing.append(str(path.relative_to(ROOT)))
    assert missing == []
