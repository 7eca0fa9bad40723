"""The house's one-way rules (shared/design/architecture.md): agent/ and coordinator/ never import each other, and
models/ and the wire package import neither — they share only the contract and models/. Checked on the source,
lazy imports inside functions included."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"agent": ("fleetfit.coordinator",), "coordinator": ("fleetfit.agent",),
             "models": ("fleetfit.agent", "fleetfit.coordinator"),
             "protos": ("fleetfit.agent", "fleetfit.coordinator")}


def imported_names(path: pathlib.Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_house_rules(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for line, name in imported_names(path) if name.startswith(FORBIDDEN[package])]
    assert not wrong, "\n".join(wrong)
