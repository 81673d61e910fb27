"""Imports run one way - results -> train -> pipeline - with no cycle between the project's modules,
and the models import only torch: read from the source, so a new import anywhere is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "train", "results")  # each may import only those before it


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (a function-level import counts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = [p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): project_imports(p, modules) - {module_name(p)} for p in files}


def test_each_layer_imports_only_the_layers_below_it(graph):
    wrong = [f"{m} imports {i}" for m, imports in graph.items() for i in imports
             if LAYERS.index(i.split(".")[0]) > LAYERS.index(m.split(".")[0])]
    assert not wrong


def test_the_models_import_only_torch_and_each_other(graph):
    models = {m: imports for m, imports in graph.items() if m.startswith("train.models")}
    assert models and not [i for imports in models.values() for i in imports if not i.startswith("train.models")]
    for path in (ROOT / "train" / "models").glob("*.py"):
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert not roots & {"ray", "mlflow", "decord", "pipeline", "results", "fsspec"}, path.name


def test_no_import_cycle(graph):
    done, on_path = set(), []

    def visit(m: str) -> None:
        if m in on_path:
            raise AssertionError("import cycle: " + " -> ".join([*on_path[on_path.index(m):], m]))
        if m in done:
            return
        on_path.append(m)
        for i in sorted(graph.get(m, ())):
            visit(i)
        on_path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
