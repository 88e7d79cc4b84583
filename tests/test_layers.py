"""Layers that hold: every import of committee_calc and drivers, checked against the one layer map.

The map is ``committee_calc/layers.py`` (documented in the README's "Layout" section).  Modules are
parsed, not imported; every import counts, also those inside functions, with relative imports
resolved (see ``source_tree.py``).
"""
from __future__ import annotations

import pytest

from source_tree import Edge, all_imports, find_cycles, imports, layer_of, load_layers, modules, parse

LAYERS = load_layers()
MAP = LAYERS.LAYERS
RANK = {layer: i for i, layer in enumerate(LAYERS.ORDER)}
WHERE = "committee_calc/layers.py (LAYERS) and the README's Layout section"


def _fmt(e: Edge, mods=None) -> str:
    mods = mods or modules()
    rel = mods[e.source].rel if e.source in mods else e.source
    return f"{rel}:{e.line}: {e.source} [{layer_of(e.source, MAP)}] -> {e.target} " \
           f"[{layer_of(e.target, MAP)}] ({e.text})"


def fail_if(problems, message: str) -> None:
    """Fail with ``message`` (no assertion rewriting of the long list) when there are problems."""
    if problems:
        pytest.fail(message, pytrace=False)


def _area(name: str, group) -> str | None:
    return next((a for a in group if name == a or name.startswith(a + ".")), None)


def upward(edges, layers=MAP) -> list[Edge]:
    """Imports of a module on a higher layer than the importer."""
    ranks = [(layer_of(e.source, layers), layer_of(e.target, layers), e) for e in edges]
    return [e for src, dst, e in ranks if src is not None and dst is not None and RANK[dst] > RANK[src]]


def sibling_imports(edges, groups=LAYERS.SIBLING_AREAS) -> list[Edge]:
    """Imports from one area of a sibling group into another (mc importing md)."""
    return [e for e in edges for g in groups
            if _area(e.source, g) and _area(e.target, g) and _area(e.source, g) != _area(e.target, g)]


def isolated_imports(edges, packages=LAYERS.ISOLATED_MODULES) -> list[Edge]:
    """Imports between two different modules of an isolated package (a driver importing a driver)."""
    return [e for e in edges for pkg in packages
            if e.source.startswith(pkg + ".") and e.target.startswith(pkg + ".") and e.source != e.target]


def graph(edges) -> dict[str, set]:
    g: dict[str, set] = {}
    for e in edges:
        if e.source != e.target:
            g.setdefault(e.source, set()).add(e.target)
    return g


# ----------------------------------------------------------------------------- the project
def test_every_module_has_a_layer():
    missing = [f"{m.rel} ({name})" for name, m in modules().items() if layer_of(name, MAP) is None]
    fail_if(missing, f"modules without a layer: {missing}; add each to {WHERE} "
                     "(exact module name, or 'package.*' for a whole sub-package)")


def test_layer_map_names_existing_modules_and_known_layers():
    mods = modules()
    stale = [k for k in MAP if not any(layer_of(n, {k: "0"}) for n in mods)]
    fail_if(stale, f"entries of {WHERE} that match no module: {stale}")
    unknown = {k: v for k, v in MAP.items() if v not in RANK}
    fail_if(unknown, f"layers not in ORDER: {unknown}")
    assert set(LAYERS.NAMES) == set(LAYERS.ORDER)


def test_imports_only_downward():
    bad = upward(all_imports())
    fail_if(bad, "imports from a higher layer (a module may import only its own layer or lower; "
                 f"move the helper down or the caller up, see {WHERE}):\n  " + "\n  ".join(map(_fmt, bad)))


def test_science_areas_do_not_import_each_other():
    bad = sibling_imports(all_imports())
    fail_if(bad, "mc, md, phonons and active may use relax and analysis but never each other; move the "
                 "shared piece down to relax/analysis or a lower layer:\n  " + "\n  ".join(map(_fmt, bad)))


def test_no_driver_imports_another_driver():
    bad = isolated_imports(all_imports())
    fail_if(bad, "a driver imports another driver; move the shared code into the library "
                 "(committee_calc.cli or a science package):\n  " + "\n  ".join(map(_fmt, bad)))


def test_no_import_cycles():
    cycles = find_cycles(graph(all_imports()))
    fail_if(cycles, "import cycles (module -> imported module):\n  "
            + "\n  ".join(" -> ".join(c) for c in cycles))


def test_internal_imports_at_module_top():
    """Project imports at module level; only framework imports (torch, mace, …) may be lazy.

    A project module that exists to wrap an optional framework may be imported lazily inside
    ``try: … except ImportError`` (e.g. the numba kernels of the n2p2 member)."""
    bad = [e for e in all_imports() if e.in_function and not e.guarded]
    fail_if(bad, "project imports inside functions (move them to the module top; only third-party "
                 "framework imports may stay lazy):\n  " + "\n  ".join(map(_fmt, bad)))


# ------------------------------------------------------------- the checker itself, on synthetic source
def _synthetic(sources: dict[str, tuple[str, bool]]):
    mods = {name: parse(name, src, is_package=pkg) for name, (src, pkg) in sources.items()}
    return [e for m in mods.values() for e in imports(m, mods)]


def test_checker_resolves_relative_and_lazy_imports():
    edges = _synthetic({
        "committee_calc": ("from .committee import X\n", True),
        "committee_calc.keys": ("", False),
        "committee_calc.committee": ("", False),
        "committee_calc.gate": ("", False),
        "committee_calc.relax": ("from .. import keys as K\nfrom ..gate import Gate\n", True),
        "committee_calc.relax.gated": ("from . import pool\nfrom .. import CommitteeCalculator\n"
                                       "import numpy\n"
                                       "def f():\n    from committee_calc.cli import build_gate\n"
                                       "def g():\n    try:\n        from .pool import fast\n"
                                       "    except ImportError:\n        from .pool import slow\n", False),
        "committee_calc.relax.pool": ("", False),
        "committee_calc.cli": ("", False),
    })
    got = {(e.source, e.target, e.in_function) for e in edges}
    assert [(e.text, e.guarded) for e in edges if e.line > 5] == [("from .pool import fast", True),
                                                                 ("from .pool import slow", False)]
    assert got == {
        ("committee_calc", "committee_calc.committee", False),
        ("committee_calc.relax", "committee_calc.keys", False),
        ("committee_calc.relax", "committee_calc.gate", False),
        ("committee_calc.relax.gated", "committee_calc.relax.pool", False),
        ("committee_calc.relax.gated", "committee_calc.relax.pool", True),
        ("committee_calc.relax.gated", "committee_calc", False),
        ("committee_calc.relax.gated", "committee_calc.cli", True),
    }
    # the lazy cli import climbs from 4b to 5; importing the package __init__ (layer 2) does not
    assert [(e.source, e.target) for e in upward(edges)] == [("committee_calc.relax.gated", "committee_calc.cli")]


def test_checker_catches_siblings_drivers_and_unmapped_modules():
    edges = _synthetic({
        "committee_calc.mc.moves": ("from ..md.state import S\nfrom ..relax import gated\n", False),
        "committee_calc.md.state": ("", False),
        "committee_calc.relax": ("", True),
        "committee_calc.relax.gated": ("", False),
        "drivers.rerank": ("from drivers.active_learn import run\n", False),
        "drivers.active_learn": ("", False),
    })
    assert [(e.source, e.target) for e in sibling_imports(edges)] == [("committee_calc.mc.moves",
                                                                        "committee_calc.md.state")]
    assert [(e.source, e.target) for e in isolated_imports(edges)] == [("drivers.rerank", "drivers.active_learn")]
    assert layer_of("committee_calc.newthing", MAP) is None
    assert layer_of("committee_calc.members.n2p2.reader", MAP) == "1"
    assert layer_of("committee_calc", MAP) == "2"


@pytest.mark.parametrize("g, want", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": {"c"}}, []),
    ({"x": {"y"}, "y": {"x"}, "a": {"b"}, "b": {"a"}}, [["a", "b", "a"], ["x", "y", "x"]]),
])
def test_checker_reports_cycle_paths(g, want):
    assert find_cycles(g) == want
