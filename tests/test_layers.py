"""The house's one-way rules (shared/design/architecture.md): agent/ and coordinator/ never import each other, and
models/ and the wire package import neither — they share only the contract and models/. Inside the coordinator the
layers run one way, service/ → answers/ → predict/: answers never import the service (its store, its writes),
predictions import neither, and no layer imports the command-line modules at the top. Checked on the source, lazy
imports inside functions included."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COORDINATOR = "fleetfit.coordinator"
ENTRY = tuple(f"{COORDINATOR}.{m}" for m in ("cli", "models_cli", "quickstart", "harness"))
FORBIDDEN = {"agent": ("fleetfit.coordinator",), "coordinator": ("fleetfit.agent",),
             "models": ("fleetfit.agent", "fleetfit.coordinator"),
             "protos": ("fleetfit.agent", "fleetfit.coordinator"),
             "coordinator/service": ENTRY,
             "coordinator/answers": (f"{COORDINATOR}.service", *ENTRY),
             "coordinator/predict": (f"{COORDINATOR}.service", f"{COORDINATOR}.answers", *ENTRY)}


def imported_names(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of each import; `from package import a` counts as package.a too (a module or a name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative imports would hide a layer's crossing: none are used
            found.append((node.lineno, f"relative import (level {node.level})"))
    return found


def crosses(name: str, forbidden: tuple[str, ...]) -> bool:
    return name.startswith("relative import") or any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_house_rules(package):
    wrong = {f"{path.relative_to(ROOT)}:{line}": f"imports {name}"  # the first crossing per line
             for path in sorted((ROOT / package).rglob("*.py"))
             for line, name in reversed(imported_names(path)) if crosses(name, FORBIDDEN[package])}
    assert not wrong, "\n".join(f"{where} {what}" for where, what in wrong.items())


def test_the_coordinator_top_holds_only_its_entry_modules():
    """New coordinator code goes into a layer: at the top are the CLIs and the in-process harness only."""
    top = {f"{COORDINATOR}.{p.stem}" for p in (ROOT / "coordinator").glob("*.py") if p.stem != "__init__"}
    assert top == set(ENTRY)
    assert {p.name for p in (ROOT / "coordinator").iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        {"service", "answers", "predict"}
