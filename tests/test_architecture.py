"""The package's layering (docs/architecture.md): read from the import statements, lazy ones
included, so a change that bends an arrow fails here rather than in a reader's head."""

import ast
from pathlib import Path

import seqlm

ROOT = Path(seqlm.__file__).parent
PACKAGES = {"seqlm.models", "seqlm.cli", "seqlm.bench", "seqlm.diagnostics"}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
    """Each seqlm module and the seqlm modules it imports (``from pkg import mod`` counts as
    importing ``pkg.mod`` when that is a module)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("seqlm"):
                    continue
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("seqlm"))
        deps.discard(name)
        graph[name] = {d for d in deps if d in modules}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, found = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _reaches(graph, start: str, prefixes: tuple[str, ...]) -> set[str]:
    return {d for d in graph[start] if d.startswith(prefixes) and d != start}


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert "seqlm.models.lm" in graph and graph["seqlm.models.lm"]  # the reader works
    assert _cycles(graph) == []


def test_dependencies_point_one_way():
    graph = _graph()
    below_models = ("seqlm.trainer", "seqlm.run", "seqlm.checkpoint", "seqlm.generate",
                    "seqlm.evaluation", "seqlm.settings", "seqlm.cli", "seqlm.bench")
    for name, deps in graph.items():
        if name.startswith("seqlm.models"):
            assert not _reaches(graph, name, below_models), name
        if name in ("seqlm.config", "seqlm.cores", "seqlm.settings", "seqlm.presets",
                    "seqlm.errors", "seqlm.atomic", "seqlm.text", "seqlm.vocab",
                    "seqlm.tokenize", "seqlm.data", "seqlm.batches"):
            assert not _reaches(graph, name, ("seqlm.models", "seqlm.trainer", "seqlm.run")), name
        if not name.startswith("seqlm.cli") and name != "seqlm.__main__":
            assert not _reaches(graph, name, ("seqlm.cli",)), name


MODULE_LINES = 420  # a reader holds about this much in their head
HEADROOM = 40  # what a module keeps free below the limit when it lands


def test_modules_and_functions_stay_readable():
    """No module over ~400 lines (each with room to grow), no function over ~60 (docstrings
    included)."""
    for path in ROOT.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= MODULE_LINES - HEADROOM, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 64, f"{path}:{node.lineno} {node.name}"
