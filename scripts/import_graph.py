"""The import graph of the project's packages, read from the source (AST), never by importing anything.

```
python scripts/import_graph.py                 # hce_serve: modules, arrows, levels, cycles
python scripts/import_graph.py hce_serve hce_train --json
python scripts/import_graph.py hce_serve --edges   # every arrow, one per line
```

An arrow is one module importing another module of the same package tree, counted once per pair, whether the
import sits at the top or inside a function (a lazy import still ties the two together); imports under
``if TYPE_CHECKING:`` are left out, since they never run. ``from .pkg import name`` points at ``pkg/name.py``
when that module exists, else at ``pkg/__init__.py``. Levels: the longest chain of arrows, counted in modules
(a module importing nothing of the package is level 1); a circle counts as one node. Circles: every strongly connected
group of two or more modules, or a module importing itself.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_files(package: str, root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} for every ``.py`` file under ``root/package`` (packages as ``pkg``)."""
    base = root / package
    out = {}
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or its closest enclosing module (``pkg.mod.attr`` -> ``pkg.mod``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations only, never executed."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path], typing: bool = False) -> set[str]:
    """The modules of ``modules`` that ``module`` (its source at ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]  # the package relative imports start from
    found: set[str] = set()
    skipped = set() if typing else {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                                    for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
            elif resolved == module:
                found.add(module)  # a module importing itself is a circle of one
    return found


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]]  # module -> modules it imports

    @property
    def arrows(self) -> int:
        return sum(len(v) for v in self.edges.values())

    def cycles(self) -> list[list[str]]:
        """Strongly connected groups of two or more modules, and self-imports (Tarjan's algorithm)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        out: list[list[str]] = []
        counter = [0]

        def visit(v: str) -> None:
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on_stack.add(v)
            for w in sorted(self.edges[v]):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1 or v in self.edges[v]:
                    out.append(sorted(group))

        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(self.modules) + 100))
        for v in sorted(self.modules):
            if v not in index:
                visit(v)
        return sorted(out)

    def levels(self) -> dict[str, int]:
        """Each module's level: 1 + the highest level among what it imports (a circle shares one level)."""
        group_of = {m: i for i, group in enumerate(self.cycles()) for m in group}
        memo: dict[str, int] = {}

        def level(v: str, trail: frozenset[str]) -> int:
            if v in memo:
                return memo[v]
            mates = {m for m, g in group_of.items() if g == group_of.get(v, -1)} or {v}
            deps = {w for m in mates for w in self.edges[m]} - mates
            best = 1 + max((level(w, trail | mates) for w in deps if w not in trail), default=0)
            for m in mates:
                memo[m] = best
            return best

        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(self.modules) + 100))
        for v in sorted(self.modules):
            level(v, frozenset())
        return memo

    def summary(self) -> dict[str, object]:
        levels = self.levels()
        return {"modules": len(self.modules), "arrows": self.arrows, "levels": max(levels.values(), default=0),
                "cycles": self.cycles()}


def graph(package: str, root: Path = ROOT, typing: bool = False) -> Graph:
    """The import graph among the modules of ``package`` (arrows leaving the package are not counted);
    ``typing``: count the imports under ``if TYPE_CHECKING:`` too."""
    modules = module_files(package, root)
    return Graph(modules, {m: imports_of(m, p, modules, typing) for m, p in modules.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="*", default=["hce_serve"], help="top-level packages (default: hce_serve)")
    ap.add_argument("--json", action="store_true", help="one JSON object per package")
    ap.add_argument("--edges", action="store_true", help="print every arrow")
    ap.add_argument("--typing", action="store_true", help="count imports under `if TYPE_CHECKING:` too")
    args = ap.parse_args(argv)
    for pkg in args.packages:
        if not (ROOT / pkg).is_dir():
            ap.error(f"{pkg}: no such package folder under {ROOT}")
        g = graph(pkg, typing=args.typing)
        s = g.summary()
        if args.json:
            print(json.dumps({"package": pkg, **s}))
        else:
            circles = "; ".join(" <-> ".join(c) for c in s["cycles"]) or "none"
            print(f"{pkg}: {s['modules']} modules, {s['arrows']} arrows, {s['levels']} levels, circles: {circles}")
        if args.edges:
            for src in sorted(g.edges):
                for dst in sorted(g.edges[src]):
                    print(f"  {src} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
