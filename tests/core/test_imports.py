"""kernelbank.core has no import cycle and no colour twins.

Reads every core module's ``from .x import`` statements (module level and inside
functions) with ``ast`` and looks for a cycle in that graph; a lazy import inside a
function closes a cycle just as well at run time, so it counts.
"""

import ast
import pathlib

import kernelbank.core

CORE = pathlib.Path(kernelbank.core.__file__).parent


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in CORE.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges.add(node.module.split(".")[0])
                else:
                    edges.update(alias.name for alias in node.names)
        graph[path.stem] = edges & {p.stem for p in CORE.glob("*.py")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
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
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_core_has_no_import_cycle():
    graph = {k: v for k, v in _graph().items() if k != "__init__"}
    assert _cycle(graph) is None, f"import cycle in kernelbank.core: {_cycle(graph)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_core_has_no_channel_twin_modules():
    assert not sorted(CORE.glob("channel_*.py"))


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute names of every module a core file imports, lazily or not."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = {0: "", 1: "kernelbank.core", 2: "kernelbank"}[node.level]
            names.add(".".join(p for p in (package, node.module or "") if p))
    return names


def test_core_does_no_file_io_and_imports_no_ray():
    # saving and loading live in kernelbank.io, which imports core: core importing it back
    # (even inside a method) is file I/O in the math layer and a hidden import cycle
    banned = ("kernelbank.io", "ray", "pyarrow", "fsspec", "s3fs")
    found = {path.name: sorted(name for name in _imported_modules(path)
                               if name.split(".")[0] in banned or name.startswith(banned))
             for path in CORE.glob("*.py")}
    assert not {k: v for k, v in found.items() if v}, found
