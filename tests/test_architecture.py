"""One labelling path, one evaluator, thin drivers: asserted from the source (ast), not by convention.

* Exactly one function appends reference labels to a label store: ``Labeller.label``.
* Exactly one class evaluates a committee for the science modules and drivers: ``gate.Gate``.
* Every measure of ``measures.MEASURES`` reaches ``--threshold-…``/``--cap-…`` of every driver
  with gate options.
* Drivers ≤ 150 lines, package modules ≤ 400 lines, conversion constants only in ``units.py``.

Each source check is also run on a small synthetic source to show it catches a violation.
"""
from __future__ import annotations

import ast
import importlib
import re

import pytest

from source_tree import Module, enclosing_function, layer_of, load_layers, modules, parse

MAP = load_layers().LAYERS

# ------------------------------------------------------------------------------------ helpers
#: keyword arguments of LabelStore.append/extend that no list method takes
LABEL_KEYWORDS = {"reference_results", "committee_results", "provenance", "baseline_results"}
#: methods that run a committee (ASE calculate, member/committee predict, raw member evaluation)
EVAL_METHODS = {"calculate", "predict", "predict_batch", "evaluate_members"}
SCIENCE = ("committee_calc.relax", "committee_calc.mc", "committee_calc.md", "committee_calc.phonons",
           "committee_calc.active", "committee_calc.analysis", "committee_calc.campaign")
#: the committee machinery itself, which may aggregate member predictions
AGGREGATORS = {"committee_calc.committee", "committee_calc.uncertainty", "committee_calc.delta",
               "committee_calc.gate"}
MAX_DRIVER_LINES = 150
MAX_MODULE_LINES = 400


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _calls(mod: Module):
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Call):
            yield node


def _receiver_is_self(func: ast.Attribute) -> bool:
    """``self.x(...)`` or ``super().x(...)``: a method of the class itself, not a committee."""
    v = func.value
    return (isinstance(v, ast.Name) and v.id == "self") or (
        isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super")


def label_appends(mod: Module) -> list[tuple[str, int, str]]:
    """Calls that append labels to a store: ``X.append/extend`` with ≥2 positional arguments or a
    label keyword (a list's ``append``/``extend`` takes exactly one), or the store's private
    ``X._write(...)``.  -> [(enclosing function, line, call text)]."""
    out = []
    for call in _calls(mod):
        f = call.func
        if not isinstance(f, ast.Attribute):
            continue
        kws = {k.arg for k in call.keywords}
        hit = (f.attr in ("append", "extend") and (len(call.args) >= 2 or kws & LABEL_KEYWORDS)) or (
            f.attr == "_write" and mod.name != "committee_calc.labels")
        if hit:
            out.append((enclosing_function(mod, call), call.lineno, ast.unparse(call)[:90]))
    return sorted(out, key=lambda h: (h[1], h[2]))


def reference_runs(mod: Module) -> list[tuple[str, int, str]]:
    """``<…ref…>.compute(...)``: a reference calculation outside the reference package."""
    out = []
    for call in _calls(mod):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "compute" and re.search(r"ref", ast.unparse(f.value)):
            out.append((enclosing_function(mod, call), call.lineno, ast.unparse(call)[:90]))
    return sorted(out, key=lambda h: (h[1], h[2]))


def _is_fit(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fit"


def committee_evaluations(mod: Module) -> list[tuple[str, int, str]]:
    """``X.calculate/predict/predict_batch/evaluate_members(...)`` on anything but ``self``/``super()``
    or a fitted scikit-learn estimator (``est.fit(...).predict``, ``fit = est.fit(...)``), and
    ``aggregate(...)``.  -> [(enclosing function, line, call text)] in line order."""
    fitted = {t.id for node in ast.walk(mod.tree) if isinstance(node, ast.Assign) and _is_fit(node.value)
              for t in node.targets if isinstance(t, ast.Name)}
    out = []
    for call in _calls(mod):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr in EVAL_METHODS and not _receiver_is_self(f):
            hit = not (_is_fit(f.value) or (isinstance(f.value, ast.Name) and f.value.id in fitted))
        else:
            hit = (isinstance(f, ast.Name) and f.id == "aggregate") or (
                isinstance(f, ast.Attribute) and f.attr == "aggregate")
        if hit:
            out.append((enclosing_function(mod, call), call.lineno, ast.unparse(call)[:90]))
    return sorted(out, key=lambda h: (h[1], h[2]))


def aggregations(mod: Module) -> list[tuple[str, int, str]]:
    return [c for c in committee_evaluations(mod) if re.match(r"(\w+\.)*aggregate\(", c[2])]


def _fmt(mod: Module, hits) -> list[str]:
    return [f"{mod.rel}:{line}: {func}: {text}" for func, line, text in hits]


def fail_if(problems, message: str) -> None:
    if problems:
        pytest.fail(message + ":\n  " + "\n  ".join(problems), pytrace=False)


# ----------------------------------------------------------------- (a) one labelling path
def test_one_function_appends_reference_labels():
    found = {}
    for name, mod in modules().items():
        for func, line, text in label_appends(mod):
            found.setdefault((name, func), []).append(f"{mod.rel}:{line}: {func}: {text}")
    assert ("committee_calc.labeller", "Labeller.label") in found, \
        "Labeller.label no longer appends to the label store (the check may need updating)"
    others = [hit for key, hits in sorted(found.items()) if key != ("committee_calc.labeller", "Labeller.label")
              for hit in hits]
    fail_if(others, "label-store appends outside Labeller.label (label through Gate.label/Gate.evaluate "
                    "or Labeller.label instead)")


def test_reference_runs_only_in_labeller():
    bad = []
    for name, mod in modules().items():
        if _under(name, ("committee_calc.reference",)):
            continue
        bad += [f"{mod.rel}:{line}: {func}: {text}" for func, line, text in reference_runs(mod)
                if (name, func) != ("committee_calc.labeller", "Labeller.label")]
    fail_if(bad, "reference calculations outside Labeller.label (use gate.label / Labeller.label)")


def test_label_append_check_catches_violations():
    mod = parse("committee_calc.fake", (
        "def ok(xs, store):\n"
        "    xs.append(1)\n"
        "    xs.extend([1, 2])\n"
        "def bad_positional(store, atoms, res):\n"
        "    store.append(atoms, res)\n"
        "class Learner:\n"
        "    def _label(self, atoms, res, c):\n"
        "        self.labels.append(atoms, res, committee_results=c)\n"
        "def bad_keyword(s, a):\n"
        "    s.append(a, reference_results={}, provenance={})\n"
        "def bad_extend(s, items):\n"
        "    s.extend(items, provenance={'driver': 'x'})\n"
        "def bad_private(s, frames):\n"
        "    s._write(frames)\n"
        "def bad_ref(reference, atoms):\n"
        "    return reference.compute(atoms, ('energy',))\n"))
    assert [h[0] for h in label_appends(mod)] == ["bad_positional", "Learner._label", "bad_keyword",
                                                  "bad_extend", "bad_private"]
    assert [h[0] for h in reference_runs(mod)] == ["bad_ref"]


# ------------------------------------------------------------------- (b) one evaluator
def test_science_modules_and_drivers_never_evaluate_a_committee():
    bad = []
    for name, mod in modules().items():
        if _under(name, SCIENCE + ("drivers",)):
            bad += _fmt(mod, committee_evaluations(mod))
    fail_if(bad, "science modules and drivers evaluate through a Gate (Gate(committee) without a "
                 "reference is the committee-only evaluator), never calculate/predict/evaluate_members/"
                 "aggregate on a committee")


def test_only_gate_evaluates_a_committee_above_the_committee_layer():
    """On layers 3 and 5 (measures, labels, reference, labeller, gate, cli) only gate.Gate runs a committee."""
    bad, gate_funcs = [], set()
    for name, mod in modules().items():
        if layer_of(name, MAP) not in ("3", "5"):
            continue
        hits = committee_evaluations(mod)
        if name == "committee_calc.gate":
            gate_funcs |= {func for func, _, _ in hits}
            bad += _fmt(mod, [h for h in hits if not h[0].startswith("Gate.")])
        else:
            bad += _fmt(mod, hits)
    fail_if(bad, "committee evaluations outside gate.Gate")
    assert gate_funcs, "gate.Gate no longer calls the committee (the check may need updating)"


def test_aggregate_only_in_the_committee_machinery_and_the_gate():
    bad = []
    for name, mod in modules().items():
        if name not in AGGREGATORS:
            bad += _fmt(mod, aggregations(mod))
    fail_if(bad, f"aggregate(...) outside {sorted(AGGREGATORS)}")


def test_evaluation_check_catches_violations():
    mod = parse("committee_calc.relax.fake", (
        "from ..uncertainty import aggregate\n"
        "class Relaxer(Calculator):\n"
        "    def calculate(self, atoms, properties, changes):\n"
        "        super().calculate(atoms, properties, changes)\n"
        "        self.committee.calculate(atoms, properties, changes)\n"
        "    def run(self):\n"
        "        return self.predict()\n"
        "def energies(committee, images, atoms):\n"
        "    e = [r['energy'] for r in committee.predict(images)]\n"
        "    return aggregate(committee.evaluate_members(atoms, ('energy',)), None)\n"
        "def regression(X, y, A, B):\n"
        "    fit = KernelRidge().fit(X, y)\n"
        "    return fit.predict(A) + Ridge().fit(X, y).predict(B)\n"))
    hits = committee_evaluations(mod)
    assert [(h[0], h[2].split("(")[0]) for h in hits] == [
        ("Relaxer.calculate", "self.committee.calculate"), ("energies", "committee.predict"),
        ("energies", "aggregate"), ("energies", "committee.evaluate_members")]
    assert [h[2].split("(")[0] for h in aggregations(mod)] == ["aggregate"]


# --------------------------------------------------- every measure reaches every gated driver
def _drivers_with_gate_options() -> list[str]:
    out = []
    for name, mod in modules().items():
        if name.startswith("drivers.") and any(
                (isinstance(c.func, ast.Name) and c.func.id == "add_gate_arguments")
                or (isinstance(c.func, ast.Attribute) and c.func.attr == "add_gate_arguments")
                for c in _calls(mod)):
            out.append(name)
    return out


@pytest.mark.parametrize("driver", _drivers_with_gate_options())
def test_every_measure_reaches_the_driver_help(driver):
    from committee_calc.measures import MEASURES

    mod = importlib.import_module(driver)
    if not hasattr(mod, "build_parser"):
        pytest.skip(f"{driver} has gate options but no build_parser(): its --help cannot be built "
                    "without running the driver")
    text = mod.build_parser().format_help()
    missing = [f"--{m.option(kind).replace('_', '-')}" for m in MEASURES.values()
               for kind in ("threshold", "cap") if f"--{m.option(kind).replace('_', '-')}" not in text]
    assert not missing, f"{driver} --help lacks {missing}"


def test_gated_drivers_found():
    assert _drivers_with_gate_options(), "no driver calls cli.add_gate_arguments (the check may need updating)"


# ------------------------------------------------------------------------------- sizes
def test_drivers_are_thin():
    big = [f"{m.rel}: {m.n_lines} lines" for name, m in modules().items()
           if name.startswith("drivers.") and m.n_lines > MAX_DRIVER_LINES]
    fail_if(big, f"drivers over {MAX_DRIVER_LINES} lines (move library logic into committee_calc)")


def test_package_modules_under_400_lines():
    big = [f"{m.rel}: {m.n_lines} lines" for name, m in modules().items()
           if name.startswith("committee_calc") and m.n_lines > MAX_MODULE_LINES]
    fail_if(big, f"package modules over {MAX_MODULE_LINES} lines (split by concern)")


# ------------------------------------------------------------------ units only in units.py
#: leading significant digits of conversion constants (eV↔kJ/mol, amu→g, eV/Å³↔GPa, eV↔kcal/mol,
#: Hartree, Bohr, calorie, Boltzmann, Avogadro, elementary charge, Faraday, Rydberg)
CONSTANT_DIGITS = ("9648", "10364", "16605", "16021", "62415", "2306", "4336", "27211", "52917", "18897",
                   "4184", "8617", "1380649", "6022", "13605")


def _significant_digits(value) -> str:
    return repr(abs(float(value))).split("e")[0].replace(".", "").lstrip("0")


def conversion_constants(mod: Module) -> list[tuple[int, str]]:
    """Numbers that look like conversion constants, ``ase.units`` quotients/products (``kJ / mol``),
    and module-level names bound to an ``ase.units`` expression.  -> [(line, text)]"""
    unit_modules, unit_names = set(), set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ase":
            unit_modules |= {a.asname or a.name for a in node.names if a.name == "units"}
        elif isinstance(node, ast.ImportFrom) and node.module == "ase.units":
            unit_names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            unit_modules |= {a.asname for a in node.names if a.name == "ase.units" and a.asname}

    def is_unit(n) -> bool:
        if isinstance(n, ast.Attribute):
            v = n.value
            return (isinstance(v, ast.Name) and v.id in unit_modules) or ast.unparse(v) == "ase.units"
        return isinstance(n, ast.Name) and n.id in unit_names

    out = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            digits = _significant_digits(node.value)
            if any(len(digits) >= len(p) and digits.startswith(p) for p in CONSTANT_DIGITS):
                out.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.BinOp) and is_unit(node.left) and is_unit(node.right):
            out.append((node.lineno, ast.unparse(node)))
    for node in mod.tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                and any(is_unit(n) for n in ast.walk(node.value)):
            out.append((node.lineno, ast.unparse(node)[:90]))
    return sorted({line: text for line, text in sorted(out, reverse=True)}.items())  # one hit per line


def test_conversion_constants_only_in_units():
    bad = [f"{m.rel}:{line}: {text}" for name, m in modules().items() if name != "committee_calc.units"
           for line, text in conversion_constants(m)]
    fail_if(bad, "conversion constants outside committee_calc/units.py (import them from there)")


def test_conversion_constant_check_catches_violations():
    mod = parse("committee_calc.fake", (
        "from ase import units as u\n"
        "from ase.units import kJ, mol\n"
        "EV_TO_KJMOL = 96.485\n"
        "KJMOL = kJ / mol\n"
        "GPA = u.GPa\n"
        "density = 1.66054 * 12 / 30\n"
        "def step(dt_fs):\n"
        "    x = 1.5 * 0.3\n"
        "    return dt_fs * u.fs\n"))
    assert [line for line, _ in conversion_constants(mod)] == [3, 4, 5, 6]
    units = modules()["committee_calc.units"]
    assert conversion_constants(units), "units.py defines the constants (the check may need updating)"
