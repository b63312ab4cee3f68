"""The dependency rule of avfuse, read from the source (AST, lazy imports included;
imports under ``if TYPE_CHECKING:`` are annotations, not dependencies).

- ``pipeline.core`` is the ground: it imports nothing else of avfuse.
- ``data_manifests``, ``extractors`` and ``fusion`` are libraries: of ``pipeline`` they
  import ``pipeline.core`` alone; ``fusion`` imports neither ``extractors`` nor
  ``data_manifests`` (tensors in, no paths), the libraries do not import each other.
- No import cycle between modules.
- No module of the product over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "extractors", "fusion", "data_manifests")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every avfuse module ``path`` imports, at the top or inside functions.

    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else ``a.b``.
    """
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # type-only imports are no run-time dependency
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me:
                found.add(n)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    return {m: imported_modules(p, mods) for m, p in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def allowed(src: str, dst: str) -> bool:
    top_src, top_dst = src.split(".")[0], dst.split(".")[0]
    if src.startswith("pipeline.core"):
        return dst.startswith("pipeline.core")
    if top_src in ("extractors", "fusion", "data_manifests"):
        if top_dst == "pipeline":
            return dst.startswith("pipeline.core")
        return top_dst == top_src
    return True


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_libraries_import_only_downward():
    bad = [f"{src} imports {dst}" for src, dsts in import_graph().items() for dst in sorted(dsts)
           if not allowed(src, dst)]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_modules_under_400_lines():
    long = {m: n for m, p in all_modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("package", ["pipeline.core", "pipeline.cache", "pipeline.score", "pipeline.extract",
                                     "pipeline.experiments", "pipeline.report", "pipeline.train", "extractors",
                                     "fusion", "data_manifests"])
def test_packages_name_their_public_surface(package):
    import importlib

    mod = importlib.import_module(package)
    names = getattr(mod, "__all__", None)
    assert names, f"{package}/__init__.py has no __all__"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_layering_rule_rejects_upward_imports():
    assert not allowed("fusion.trainer", "pipeline.cache.reader")
    assert not allowed("pipeline.core.metrics", "pipeline.report.det")
    assert not allowed("data_manifests.trials", "extractors.media.decode")
    assert allowed("fusion.evaluation", "pipeline.core.metrics")
    assert allowed("pipeline.cli.main", "fusion.registry")
