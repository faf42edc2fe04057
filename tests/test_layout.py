"""The package's shape: no import circle between its modules, and what export and serve read ships in it."""

from __future__ import annotations

import ast
from pathlib import Path

import smartedit
from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE
from smartedit.export.repository import ONNX_CPU_HOST, SOURCES

PACKAGE = Path(smartedit.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each smartedit module -> the smartedit modules it imports, anywhere in its body (an import inside a
    function is still a dependency: only its time differs)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py") if "model_repository" not in path.parts}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from smartedit.serving import steps` imports the module steps
                    whole = f"{node.module}.{alias.name}"
                    found.add(whole if whole in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = import_graph()
    # The graph sees both forms of import: `from smartedit.serving import steps` and `from smartedit.ops.server import`.
    assert "smartedit.serving.steps" in graph["smartedit.serving.settings"]
    assert "smartedit.ops.server" in graph["smartedit.cli.main"]
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    graph = import_graph()
    graph["smartedit.diffusion.spec"] = graph["smartedit.diffusion.spec"] | {"smartedit.cli.main"}
    assert any({"smartedit.diffusion.spec", "smartedit.cli.main"} <= set(circle) for circle in circles(graph))


def test_what_export_reads_is_inside_the_package():
    # A plain `pip install .` carries these as package data (pyproject's package-data): nothing is read
    # from a checkout around the package.
    for path in (SOURCES, ONNX_CPU_HOST, SHIPPED_LATENCY_TABLE):
        assert path.exists() and PACKAGE in path.resolve().parents, path
    models = sorted(folder.name for folder in SOURCES.iterdir() if (folder / "1" / "model.py").is_file())
    assert models == ["denoise_engine", "inpaint_stream", "postprocess", "preprocess", "scheduler", "segment",
                      "server_info"]


def test_each_python_model_in_the_repository_is_a_shim_of_a_package_module():
    shims = sorted(SOURCES.glob("*/1/model.py")) + sorted(SOURCES.glob("*/model.py"))
    assert len(shims) == 9
    for shim in shims:
        name = shim.relative_to(SOURCES).parts[0]
        body = ast.parse(shim.read_text()).body
        statements = [statement for statement in body if not (isinstance(statement, ast.Expr) and
                                                              isinstance(statement.value, ast.Constant))]
        assert len(statements) == 1 and ast.unparse(statements[0]) == (
            f"from smartedit.serving.models.{name} import TritonPythonModel"), (shim, ast.unparse(body))
        assert (PACKAGE / "serving" / "models" / f"{name}.py").is_file()
