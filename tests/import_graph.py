"""Import cycles among a package's modules, read from the source with `ast` (nothing is imported).

Every import statement counts wherever it stands: at the top, under `if TYPE_CHECKING:`, or inside
a function. A cycle that only type checkers or a lazy import see is still two modules that cannot
be understood, tested or moved apart. Only edges between modules of the package are followed.

    from import_graph import format_cycles, import_cycles
    assert not (cycles := import_cycles("engine.pipeline")), format_cycles(cycles)
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module in `package` (its `__init__` as the package's name)."""
    folder = root.joinpath(*package.split("."))
    if not (folder / "__init__.py").is_file():
        raise ValueError(f"{package} is not a package under {root}: no {folder / '__init__.py'}")
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may refer to: `from a import b` gives `a` and `a.b`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        anchor = here[: len(here) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def module_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules(package, root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for dotted in _imported(node, name, is_package):
                    # `import a.b.c` also runs a and a.b; each is an edge when it is in the package.
                    parts = dotted.split(".")
                    prefixes = (".".join(parts[:n]) for n in range(1, len(parts) + 1))
                    targets.update(p for p in prefixes if p in modules)
        targets.discard(name)
        # A module's own package runs before it: that edge is Python's, not the code's.
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    return graph


@dataclass(frozen=True)
class Cycle:
    """Modules that all import each other, directly or through one another."""

    modules: frozenset[str]  # the whole strongly connected group
    path: tuple[str, ...]  # one shortest cycle through it, ending where it starts

    def __str__(self) -> str:
        text = " -> ".join(self.path)
        others = sorted(self.modules - set(self.path))
        return f"{text} (with {', '.join(others)} in the same circle)" if others else text


def find_cycles(graph: dict[str, set[str]]) -> list[Cycle]:
    """One `Cycle` per strongly connected group of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [Cycle(frozenset(group), tuple(_cycle_in(graph, group))) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest cycle through the group's first module (breadth-first, inside the group)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")  # a group always has one


def import_cycles(package: str, root: Path = ROOT) -> list[Cycle]:
    """The import cycles among `package`'s modules (empty when there are none)."""
    return find_cycles(module_graph(package, root))


def format_cycles(cycles: list[Cycle]) -> str:
    return f"{len(cycles)} import cycle(s):\n" + "\n".join(f"  {c}" for c in cycles)
