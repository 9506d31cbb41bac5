"""Imports flow one way and form no cycle.

import-linter checks the contracts in pyproject.toml (the layers, and no cycle between sibling
packages). Its graph counts `from pkg import sub` as importing pkg.sub only, so a cycle through
a package's own re-exports (pkg/__init__.py imports pkg.sub, which imports pkg again) would slip
past it; the walk below counts those too, and imports inside functions.
"""

import ast
from pathlib import Path

import growlm

SRC = Path(growlm.__file__).parent


def test_import_linter_contracts_are_kept():
    from importlinter.cli import lint_imports

    root = SRC.parents[1]
    assert (root / "pyproject.toml").is_file()
    assert lint_imports(config_filename=str(root / "pyproject.toml"), cache_dir=None) == 0


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the growlm modules it imports anywhere in its body; `from pkg import name`
    imports pkg (its __init__ runs) and pkg.name when that is a module."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                edges.add(base)
                edges |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_level_imports_and_re_exports():
    graph = import_graph()
    assert "growlm.report.write" in graph["growlm.report"]  # the package re-exports it
    assert "growlm.eval.scheduled" in graph["growlm.cli.train"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_anywhere():
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle)
