"""The generic member: any ASE calculator instance (or import path + parameters)."""
from __future__ import annotations

from ase.calculators.calculator import Calculator

from ..errors import ConfigError
from ..imports import import_object
from .base import MEMBER_PROPERTIES, Member, as_prediction


class ASEMember(Member):
    """Wrap one ASE calculator.

    The calculator is called through its own API (``get_properties``) on the
    committee's private copy of the atoms, so its own result caching works and
    the user's ``atoms.calc`` is never touched.
    """

    backend = "ase"

    def __init__(self, calc, name: str | None = None, species=None, cutoff=None):
        if not hasattr(calc, "get_property"):
            raise ConfigError(
                f"member {name or calc!r} is not an ASE calculator (no get_property); "
                "pass a Calculator instance"
            )
        super().__init__(name or type(calc).__name__)
        self.calc = calc
        self.species = frozenset(species) if species else None
        self.cutoff = cutoff
        props = tuple(getattr(calc, "implemented_properties", ()))
        self.implemented_properties = tuple(p for p in MEMBER_PROPERTIES if p in props)

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> ASEMember:
        path = spec.get("calculator")
        if path is None:
            raise ConfigError("an 'ase' member needs 'calculator: <import path>'")
        factory = import_object(path)
        params = dict(spec.get("parameters") or {})
        try:
            calc = factory(**params)
        except TypeError as exc:
            raise ConfigError(f"cannot construct {path} with parameters {params}: {exc}") from exc
        if not isinstance(calc, Calculator) and not hasattr(calc, "get_property"):
            raise ConfigError(f"{path} did not build an ASE calculator")
        return cls(calc, name=spec.get("name"), species=spec.get("species"), cutoff=spec.get("cutoff"))

    def predict(self, atoms, properties):
        want = [p for p in properties if p in self.implemented_properties]
        results = {p: self.calc.get_property(p, atoms) for p in want}
        # per-atom energies come for free with many calculators: keep them if computed
        extra = getattr(self.calc, "results", {}) or {}
        if "energies" not in results and extra.get("energies") is not None:
            results["energies"] = extra["energies"]
        return as_prediction(results, len(atoms))

    def describe(self):
        return {"backend": "ase", "name": self.name, "calculator": type(self.calc).__name__}
