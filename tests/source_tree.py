"""The source of ``committee_calc`` and ``drivers`` as parsed modules, for the structure tests.

Used by ``test_layers.py`` and ``test_architecture.py``: every module is parsed with :mod:`ast`
(never imported), and every import statement — also those inside functions — is resolved to the
project module it loads (relative imports included).  The layer map is read from
``committee_calc/layers.py`` by path, so these tests work even while a package module is broken.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("committee_calc", "drivers")
FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


@dataclass
class Module:
    name: str  # dotted, a package's __init__ is the package name
    path: Path
    is_package: bool
    source: str
    tree: ast.Module = field(repr=False)

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def n_lines(self) -> int:
        return len(self.source.splitlines())


@dataclass(frozen=True)
class Edge:
    """One import of a project module: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int
    in_function: bool
    text: str
    guarded: bool = False  # inside ``try: … except ImportError`` (optional dependency)


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def parse(name: str, source: str, path: Path | None = None, is_package: bool = False) -> Module:
    return Module(name, path or ROOT / (name.replace(".", "/") + ".py"), is_package, source,
                  ast.parse(source, filename=str(path or name)))


@lru_cache(maxsize=1)
def modules() -> dict[str, Module]:
    """Every module of the project packages, by dotted name."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_package = module_name(path)
            out[name] = parse(name, path.read_text(encoding="utf-8"), path, is_package)
    return out


def load_layers():
    """``committee_calc/layers.py`` loaded by path (no package import)."""
    spec = importlib.util.spec_from_file_location("_cc_layers", ROOT / "committee_calc" / "layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def layer_of(name: str, layers: dict) -> str | None:
    """The layer of module ``name`` under the map ``layers`` (exact keys, then longest ``pkg.*``)."""
    if name in layers:
        return layers[name]
    best, layer = -1, None
    for key, value in layers.items():
        if key.endswith(".*"):
            pkg = key[:-2]
            if (name == pkg or name.startswith(pkg + ".")) and len(pkg) > best:
                best, layer = len(pkg), value
    return layer


def is_project(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PACKAGES)


def _known(name: str, known) -> str:
    """``name`` itself if it is a project module, else its longest prefix that is."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return name


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for h in node.handlers:
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        names |= {ast.unparse(t) for t in types if t is not None}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _with_parents(tree: ast.AST):
    """(node, inside_a_function, guarded) for every node of ``tree``; ``guarded``: in the body of a
    ``try`` that catches ImportError (an optional-dependency guard)."""
    stack = [(tree, False, False)]
    while stack:
        node, inside, guarded = stack.pop()
        yield node, inside, guarded
        child_inside = inside or isinstance(node, FUNCTION_NODES)
        if isinstance(node, ast.Try) and _catches_import_error(node):
            stack.extend((c, child_inside, True) for c in node.body)
            rest = node.handlers + node.orelse + node.finalbody
            stack.extend((c, child_inside, guarded) for c in rest)
        else:
            stack.extend((c, child_inside, guarded) for c in ast.iter_child_nodes(node))


def imports(mod: Module, known) -> list[Edge]:
    """Every import of a project module in ``mod`` (relative ones resolved), in line order."""
    edges = []
    for node, inside, guarded in _with_parents(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_project(alias.name):
                    edges.append(Edge(mod.name, _known(alias.name, known), node.lineno, inside,
                                      f"import {alias.name}", guarded))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.name.split(".")
                if not mod.is_package:
                    base = base[:-1]
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if not is_project(full):
                continue
            names: dict[str, list] = {}  # target -> names imported from it by this statement
            for alias in node.names:
                sub = f"{full}.{alias.name}"
                names.setdefault(sub if sub in known else _known(full, known), []).append(alias.name)
            for target, got in names.items():
                edges.append(Edge(mod.name, target, node.lineno, inside,
                                  f"from {'.' * node.level}{node.module or ''} import {', '.join(got)}", guarded))
    return sorted(edges, key=lambda e: (e.line, e.target))


def all_imports() -> list[Edge]:
    mods = modules()
    return [e for m in mods.values() for e in imports(m, mods)]


def find_cycles(graph: dict[str, set]) -> list[list[str]]:
    """One cycle path ``[a, b, …, a]`` per strongly connected component with a cycle (Tarjan)."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):  # recursive: depth is bounded by the number of modules (~100)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in comps:
        start = min(comp)
        # breadth-first search for the shortest way back to start inside the component
        prev, frontier, found = {start: None}, [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w == start:
                        found = v
                        break
                    if w in comp and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev[v]
        cycles.append([start] + path[1:][::-1] + [start])
    return sorted(cycles)


def functions(mod: Module):
    """(qualified name, function node) for every function and method of ``mod``."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = f"{prefix}{child.name}"
                out.append((q, child))
                visit(child, q + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(mod.tree, "")
    return out


def enclosing_function(mod: Module, node: ast.AST) -> str:
    """Qualified name of the innermost function of ``mod`` containing ``node`` (``<module>``)."""
    best, best_span = "<module>", None
    for q, fn in functions(mod):
        if fn.lineno <= node.lineno <= (fn.end_lineno or fn.lineno):
            span = (fn.end_lineno or fn.lineno) - fn.lineno
            if best_span is None or span <= best_span:
                best, best_span = q, span
    return best
