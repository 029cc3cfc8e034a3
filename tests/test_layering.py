"""splitpack's modules import one way, down the order the README's layout section gives, and
no import cycle exists among them (imports inside functions included; see
:mod:`tests.import_graph` for the one exception, ``if __name__ == "__main__":`` blocks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import PACKAGE_ROOT, find_cycle, import_graph

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = (
    ("splitpack.errors", "splitpack.quiet", "splitpack._version"),
    ("splitpack.formats",),
    ("splitpack.planning",),
    ("splitpack.runtimes",),
    ("splitpack.serving",),
    ("splitpack.datasets", "splitpack.models"),
    ("splitpack.predictors",),
    ("splitpack.compiler",),
    ("splitpack.api",),
    ("splitpack.bench",),
    ("splitpack.cli",),
    ("splitpack", "splitpack.__main__"),
)


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix that names ``module`` or a package
    above it."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[1])):
                best = (index, name)
    if best is None:
        raise AssertionError(f"{module} has no layer: add it (or its package) to LAYERS and to "
                             "the README's layout section")
    return best[0]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a higher layer than the importer's."""
    return sorted(f"{source} (layer {layer_of(source)}) -> {target} (layer {layer_of(target)})"
                  for source, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(source))


def test_every_import_points_down_the_layers() -> None:
    graph = import_graph()
    assert {"splitpack.formats.wire", "splitpack.runtimes.device", "splitpack.cli"} <= set(graph)
    assert not violations(graph), "\n".join(violations(graph))


def test_no_import_cycle_among_the_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_nothing_imports_bench_or_cli_but_themselves_and_the_entry_points() -> None:
    for source, targets in import_graph().items():
        if layer_of(source) >= layer_of("splitpack.cli"):
            continue
        upward = [t for t in targets if t.startswith(("splitpack.bench", "splitpack.cli"))]
        assert source.startswith("splitpack.bench") or not upward, f"{source} imports {upward}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "splitpack"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_find_an_upward_import_inside_a_function_and_a_cycle(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "formats/__init__.py": "",
        "formats/wire.py": "def f():\n    from splitpack.runtimes import device\n",
        "runtimes/__init__.py": "",
        "runtimes/device.py": "import splitpack.formats.wire\n",
        "serving/__init__.py": "",
        "serving/edge.py": ("import splitpack.formats.wire\n"
                          "if __name__ == '__main__':\n    from splitpack.cli import run_as\n"),
        "cli/__init__.py": "",
    })
    graph = import_graph(root)
    assert graph["splitpack.formats.wire"] == {"splitpack.runtimes", "splitpack.runtimes.device"}
    assert graph["splitpack.serving.edge"] == {"splitpack.formats.wire"}  # the script-only import
    assert violations(graph) == [
        "splitpack.formats.wire (layer 1) -> splitpack.runtimes (layer 3)",
        "splitpack.formats.wire (layer 1) -> splitpack.runtimes.device (layer 3)",
    ]
    assert find_cycle(graph) == ["splitpack.formats.wire", "splitpack.runtimes.device",
                                 "splitpack.formats.wire"]


def test_a_module_outside_every_layer_is_reported() -> None:
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("elsewhere.module")
    assert PACKAGE_ROOT.name == "splitpack"
