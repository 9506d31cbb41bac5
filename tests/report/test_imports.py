"""growlm.report imports no cycle, counting imports inside functions and package re-exports."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / "growlm").rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module → the growlm modules it imports anywhere in its body. `from pkg import name`
    counts as importing pkg (its __init__ runs) and, when name is a submodule, that too."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                edges.add(base)
                edges |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles_through(graph: dict[str, set[str]], prefix: str) -> list[list[str]]:
    found = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt == start:
                found.append(path + [start])
            elif nxt not in path and nxt.startswith(prefix):
                walk(start, nxt, path + [nxt])

    for module in graph:
        if module.startswith(prefix):
            walk(module, module, [module])
    return found


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "growlm.report.write" in graph["growlm.report"]  # the package re-exports write
    assert "growlm.report.html" in graph["growlm.report.write"]  # imported inside a function


def test_report_has_no_import_cycle():
    cycles = cycles_through(import_graph(), "growlm.report")
    assert not cycles, " → ".join(cycles[0])


def test_report_imports_flow_one_way():
    """report may use train (metrics, checkpoints) and eval; nothing below imports report."""
    graph = import_graph()
    lower = ("growlm.model", "growlm.grow", "growlm.freeze", "growlm.adapters", "growlm.optim",
             "growlm.plan", "growlm.train", "growlm.errors", "growlm.units", "growlm.files",
             "growlm.progress", "growlm.config")
    wrong = [(m, e) for m, edges in graph.items() if m.startswith(lower)
             for e in edges if e.startswith("growlm.report")]
    assert not wrong
    assert not any(e.startswith("growlm.report") for e in graph["growlm.train.metrics"])
