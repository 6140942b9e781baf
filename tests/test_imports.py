"""Import structure: no import cycle among kldiv's and trt_backend's modules, and the kernel
layer (kldiv._kernels) is a leaf that imports nothing of the rest of kldiv.

Imports are read from the source with ``ast``: every import that runs, at module level or
inside a function (a deferred import still ties two modules together); ``if TYPE_CHECKING:``
blocks are skipped, and so are the parent packages Python loads before any module.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kldiv", "trt_backend")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # ``from pkg import submodule`` loads the submodule; any other name needs ``pkg`` itself
    # (a module's own parent packages are loaded before it in any case, and not counted)
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    needs_target = len(subs) < len(node.names) and target in MODULES
    return subs + ([target] if needs_target else [])


def _type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(module: str, *, module_level_only: bool = False) -> set[str]:
    """The project modules ``module`` imports at run time."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(_resolve(module, node))
        elif isinstance(node, ast.stmt) and _type_checking(node):
            stack.extend(node.orelse)
        elif module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.ClassDef, ast.Lambda)):
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))
    found.discard(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = {m: _imports(m) for m in MODULES}
    assert sum(len(v) for v in graph.values()) > 50  # the parser sees the real imports
    assert "kldiv.histogram" in graph["kldiv.collect"]
    assert "kldiv._kernels.wrappers" in graph["kldiv._kernels"]  # a deferred import counts
    assert "kldiv.cachefile" not in _imports("kldiv.pipeline", module_level_only=True)
    assert "kldiv.cachefile" in graph["kldiv.pipeline"]
    assert _cycles(graph) == []


def test_the_kernel_layer_is_a_leaf():
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith("kldiv._kernels"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                outside = [t for t in _resolve(module, node)
                           if not t.startswith("kldiv._kernels")]
                offenders += [f"{module} imports {t}" for t in outside]
    assert offenders == []
