"""No import cycle reaches growlm.data, counting imports inside functions and the package's
re-exports (`growlm.data` imports `growlm.data.prepare`, so that module must not import
`growlm.data` back)."""

import ast
from pathlib import Path

import growlm

SRC = Path(growlm.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                # `from pkg import sub` imports pkg itself, and pkg.sub when that is a module.
                targets = [base] + [f"{base}.{a.name}" for a in node.names
                                    if f"{base}.{a.name}" in modules]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles_through(graph: dict[str, set[str]], prefix: str) -> list[list[str]]:
    """Every module of `prefix` that can reach itself, with one such path."""
    found = []
    for start in sorted(m for m in graph if m == prefix or m.startswith(prefix + ".")):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    found.append(path + [start])
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def test_the_graph_sees_package_re_exports():
    graph = _import_graph()
    assert "growlm.data.prepare" in graph["growlm.data"]
    assert "growlm.data.tokenizer" in graph["growlm.data.prepare"]


def test_no_import_cycle_reaches_growlm_data():
    assert _cycles_through(_import_graph(), "growlm.data") == []
