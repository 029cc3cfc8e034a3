"""The import statements of splitpack's modules, read statically (``ast``), imports inside
functions included; for the layering and isolation tests.

An import under ``if __name__ == "__main__":`` is left out: it runs only when the module is
executed as a script (``python -m splitpack.serving.edge``), never when it is imported, so it can
neither form an import cycle nor pull a module into another's import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "splitpack"


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """``splitpack/formats/wire.py`` -> ``splitpack.formats.wire`` (a package's ``__init__``
    -> the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _import_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Every module ``path`` imports, absolute: ``from a.b import c`` gives ``a.b`` and, when
    ``a/b/c.py`` or ``a/b/c/`` exists under ``root``'s parent, ``a.b.c``."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        names.add(module)
        for alias in node.names:
            candidate = root.parent.joinpath(*f"{module}.{alias.name}".split("."))
            if candidate.with_suffix(".py").is_file() or candidate.is_dir():
                names.add(f"{module}.{alias.name}")
    return names


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Each module of the package under ``root`` -> the package's modules it imports."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): {m for m in imported_names(p, root) if m in modules}
            for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
