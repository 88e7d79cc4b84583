"""CHGNet member: a pretrained CHGNet (weights shipped inside the chgnet wheel) or a checkpoint
written by chgnet's ``Trainer`` (``bestE_*.pth.tar``, ``bestF_*.pth.tar``, ``epoch*.pth.tar``).

YAML entry::

    - {backend: chgnet, version: "0.3.0"}                # pretrained: 0.3.0 (default), 0.2.0, r2scan
    - {backend: chgnet, path: models/bestE_*.pth.tar}    # fine-tuned checkpoint(s); a glob: one each
      # optional: device: cpu | cuda, dtype: float32 (CHGNet runs in float32 only),
      #           on_isolated_atoms: warn | error | ignore, batch_size: 16, name: ...

Results are those of chgnet's own ASE calculator (``chgnet.model.dynamics.CHGNetCalculator``,
chgnet 0.4.2), conversion included: CHGNet predicts the energy per atom (intensive models) and the
stress in GPa (1/V dE/dε, the ASE sign); the member returns energy = e × N [eV], forces [eV/Å] and
stress = s × ``ase.units.GPa`` [eV/Å³] as a Voigt 6-vector (ASE's ``full_3x3_to_voigt_6_stress``),
each product taken in CHGNet's float32 as the calculator does, then stored as float64.  Per-atom
``energies`` [eV] (site energies, composition shift included) come with models whose read-out is
per atom (``mlp_first``, all shipped versions).

Shared work: members with equal :meth:`CHGNetMember.group_key` (graph cutoffs, graph algorithm,
device, isolated-atom policy) share one ``CrystalGraph`` per structure;
:meth:`CHGNetMember.predict_batch` runs each model over many graphs with CHGNet's own batching
(``predict_graph(..., batch_size=)``).  Domain: the elements of CHGNet's embedding table (Z =
1-94); others raise :class:`~committee_calc.errors.UnknownSpeciesError`.  Structures that are not
periodic along some direction need no cell there: a missing lattice vector is completed with an
orthogonal one (no images are made along a non-periodic direction).

Security: a checkpoint is a pickle (``torch.load(weights_only=False)`` in ``CHGNet.from_file``);
only load files you trust.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from ase import Atoms

from .. import keys as K
from ..errors import CommitteeError, CommitteeWarning, ConfigError, ModelFileError
from ..structures import is_bulk
from ..units import GPA
from ._torch_common import check_device, check_model_file, import_framework, keeps_torch_globals, torch_scope
from .base import BatchedMember

#: pretrained versions ``CHGNet.load(model_name=...)`` of chgnet 0.4.2 knows (weights in the wheel)
VERSIONS = ("0.3.0", "0.2.0", "r2scan")
DEFAULT_VERSION = "0.3.0"
ISOLATED = ("warn", "error", "ignore")


@contextlib.contextmanager
def _quiet():
    """CHGNet prints on model construction ("CHGNet v0.3.0 initialized with ...", "CHGNet will
    run on cpu"), torch warns about a tensor built from tensors in its batching and pymatgen about
    noble gases when it writes the graph's formula; swallow these."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        # pymatgen, on the graph's formula string only (noble gases have no electronegativity)
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        yield


def _chgnet():
    import_framework("chgnet", "chgnet", "chgnet")
    with torch_scope():
        from chgnet.model import CHGNet
        from pymatgen.io.ase import AseAtomsAdaptor

    return CHGNet, AseAtomsAdaptor


def _model_input(atoms) -> Atoms:
    """What CHGNet reads of ``atoms`` (numbers, positions, cell, pbc), with a full-rank cell: a
    lattice vector missing along a non-periodic direction is completed (``Cell.complete``)."""
    cell = atoms.cell if atoms.cell.rank == 3 else atoms.cell.complete()
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=cell, pbc=atoms.pbc)


class CHGNetMember(BatchedMember):
    """One CHGNet model.

    Parameters
    ----------
    model: a loaded ``chgnet.model.CHGNet`` (or use :meth:`pretrained` / :meth:`from_file`).
    device: torch device (``"cpu"``, ``"cuda"``).
    dtype: ``None`` or ``"float32"``; CHGNet 0.4.2 fixes float32 in its graph and model, so
        ``"float64"`` is a ConfigError.
    on_isolated_atoms: an atom with no neighbour within the graph cutoff (6 Å): ``"warn"`` (a
        Python warning, the default, as CHGNetCalculator), ``"error"`` (CommitteeError) or
        ``"ignore"``.
    batch_size: structures per CHGNet forward pass in :meth:`predict_batch`.
    """

    backend = "chgnet"
    implemented_properties = (K.ENERGY, K.FORCES, K.STRESS)
    group_fields = "graph cutoffs, graph algorithm, device or isolated-atom policy"

    @keeps_torch_globals
    def __init__(self, model, name=None, version=None, path=None, device="cpu", dtype=None,
                 on_isolated_atoms="warn", batch_size=16):
        _chgnet()
        if not all(hasattr(model, a) for a in ("graph_converter", "predict_graph", "atom_embedding")):
            raise ModelFileError(f"{path or model!r} is not a CHGNet model; give a checkpoint written "
                                 "by chgnet's Trainer or a pretrained version")
        super().__init__(name or (f"chgnet:{path}" if path else f"chgnet:{version or model.version}"))
        if dtype not in (None, "float32"):
            raise ConfigError(f"CHGNet runs in float32 only (chgnet fixes torch.float32 in its graph "
                              f"and model); got dtype {dtype!r}: leave 'dtype' out or set float32")
        if on_isolated_atoms not in ISOLATED:
            raise ConfigError(f"on_isolated_atoms must be one of {ISOLATED}, got {on_isolated_atoms!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.device = check_device(device)
        self.dtype = "float32"
        self.version = version or model.version
        self.path = path
        self.on_isolated_atoms = on_isolated_atoms
        self.batch_size = int(batch_size)
        self._warned: set = set()
        self.model = model.to(self.device).eval()
        # the member checks isolated atoms itself (a warning, not a print to stderr)
        self.model.graph_converter.set_isolated_atom_response("ignore")
        conv = self.model.graph_converter
        self.cutoff = float(conv.atom_graph_cutoff)
        self.bond_cutoff = float(conv.bond_graph_cutoff)
        self.algorithm = conv.algorithm
        from ase.data import chemical_symbols

        n_el = int(model.atom_embedding.embedding.num_embeddings)
        comp = getattr(model, "composition_model", None)
        if comp is not None and hasattr(comp, "max_num_elements"):
            n_el = min(n_el, int(comp.max_num_elements))
        self.species = frozenset(chemical_symbols[z] for z in range(1, n_el + 1))
        self.has_energies = bool(getattr(model, "mlp_first", False))
        if self.has_energies:
            self.implemented_properties = (K.ENERGY, K.FORCES, K.STRESS, K.ENERGIES)

    @classmethod
    @keeps_torch_globals
    def pretrained(cls, version=DEFAULT_VERSION, **kwargs) -> CHGNetMember:
        """A pretrained CHGNet shipped in the chgnet wheel (no download); ConfigError naming
        :data:`VERSIONS` for another ``version``."""
        version = str(version)
        if version not in VERSIONS:
            raise ConfigError(f"unknown CHGNet version {version!r}; the chgnet package ships {list(VERSIONS)} "
                              "(set 'version:' to one of them, or give 'path:' to a fine-tuned checkpoint)")
        CHGNet, _ = _chgnet()
        device = check_device(kwargs.get("device", "cpu"))
        try:
            with _quiet(), torch_scope("float32"):
                model = CHGNet.load(model_name=version, use_device=device, verbose=False)
        except (OSError, RuntimeError, KeyError) as exc:
            raise ModelFileError(f"cannot load the pretrained CHGNet {version} shipped with chgnet "
                                 f"({type(exc).__name__}: {exc}); reinstall chgnet==0.4.2") from exc
        return cls(model, version=version, **kwargs)

    @classmethod
    @keeps_torch_globals
    def from_file(cls, path, **kwargs) -> CHGNetMember:
        """A CHGNet checkpoint written by chgnet's ``Trainer`` (trusted files only: a pickle);
        ModelFileError when it is missing, empty, corrupt or not a CHGNet checkpoint."""
        CHGNet, _ = _chgnet()
        path = check_model_file(path, "chgnet")
        try:
            with _quiet(), torch_scope("float32"):
                model = CHGNet.from_file(path)
        except Exception as exc:  # pickle/zip errors, missing "model" key, wrong state dict
            raise ModelFileError(
                f"cannot load CHGNet checkpoint {path!r}: {type(exc).__name__}: {exc}. The file is "
                "corrupt, truncated or not a CHGNet checkpoint; give a file written by chgnet's "
                "Trainer (e.g. bestE_*.pth.tar) or use a pretrained 'version:'."
            ) from exc
        return cls(model, path=str(path), **kwargs)

    @classmethod
    def from_spec(cls, spec: dict, base_dir=None) -> CHGNetMember:
        opts = {"name", "device", "dtype", "on_isolated_atoms", "batch_size"}
        known = opts | {"backend", "version", "path"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} for a chgnet member; known: {sorted(known)}")
        kwargs = {k: spec[k] for k in opts if k in spec}
        if "path" in spec:
            if "version" in spec:
                raise ConfigError("a chgnet member takes 'version:' (pretrained) or 'path:' (checkpoint), "
                                  "not both")
            return cls.from_file(spec["path"], **kwargs)
        return cls.pretrained(spec.get("version", DEFAULT_VERSION), **kwargs)

    # ------------------------------------------------------------------
    def group_key(self):
        return ("chgnet", round(self.cutoff, 10), round(self.bond_cutoff, 10), self.algorithm,
                self.device, self.on_isolated_atoms)

    def describe(self):
        return {"backend": "chgnet", "name": self.name, "version": self.version, "path": self.path,
                "cutoff": self.cutoff, "dtype": self.dtype, "device": self.device,
                "species": f"Z 1-{len(self.species)}"}

    def graph(self, atoms):
        """CHGNet ``CrystalGraph`` of ``atoms`` (pymatgen structure via ``AseAtomsAdaptor``, as
        CHGNetCalculator builds it) and the indices of its isolated atoms (no neighbour within
        :attr:`cutoff`); ``on_isolated_atoms: error`` raises CommitteeError for those."""
        _, AseAtomsAdaptor = _chgnet()
        g = self.model.graph_converter(AseAtomsAdaptor.get_structure(_model_input(atoms)))
        lonely = []
        if self.on_isolated_atoms != "ignore":
            centers = set(g.atom_graph.reshape(-1, 2)[:, 0].cpu().numpy().tolist())
            lonely = [i for i in range(len(atoms)) if i not in centers]
            if lonely and self.on_isolated_atoms == "error":
                raise CommitteeError(f"member {self.name!r}: {self._isolated_message(atoms, lonely)}")
        return g, lonely

    def _isolated_message(self, atoms, lonely) -> str:
        more = "…" if len(lonely) > 10 else ""
        return (f"{len(lonely)} atom(s) (indices {lonely[:10]}{more}) of {atoms.get_chemical_formula()} "
                f"have no neighbour within CHGNet's {self.cutoff:g} Å graph cutoff; CHGNet's prediction "
                "is unreliable there. Check the structure (vacuum, cell) or choose on_isolated_atoms: "
                "warn | error | ignore")

    def _warn_isolated(self, atoms, lonely) -> None:
        """One RuntimeWarning per member and (formula, isolated atoms): not one per MD step."""
        key = (atoms.get_chemical_formula(), tuple(lonely))
        if lonely and key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"member {self.name!r}: {self._isolated_message(atoms, lonely)}", CommitteeWarning,
                          stacklevel=4)

    @classmethod
    @keeps_torch_globals
    def predict_batch(cls, members, structures, properties=("energy", "forces")) -> list:
        """Predictions of every member for every structure: ``out[i][k]`` for structure i and
        member k, with energy [eV], forces (N,3) [eV/Å], stress (6,) [eV/Å³, Voigt, ASE sign]
        for 3-D periodic structures when asked, energies (N,) [eV] when asked and available.
        One graph per structure for all members; each model runs CHGNet's batched
        ``predict_graph`` (``batch_size`` structures per forward pass)."""
        from ase.stress import full_3x3_to_voigt_6_stress

        members, structures = list(members), list(structures)
        cls._check_group(members)
        for a in structures:
            for m in members:
                m.check_atoms(a)
        periodic = [is_bulk(a) for a in structures]
        want_stress = K.STRESS in properties and any(periodic)
        task = "efs" if want_stress else "ef"
        out = [[None] * len(members) for _ in structures]
        with _quiet(), torch_scope("float32"):
            built = [members[0].graph(a) for a in structures]
            graphs = [g for g, _ in built]
            for k, m in enumerate(members):
                want_e = K.ENERGIES in properties and m.has_energies
                res = m.model.predict_graph(graphs, task=task, return_site_energies=want_e,
                                            batch_size=m.batch_size)
                res = [res] if isinstance(res, dict) else res
                for i, (a, r) in enumerate(zip(structures, res)):
                    # as CHGNetCalculator.calculate (its stress_weight is ase.units.GPa = GPA):
                    # the products in CHGNet's float32, then float64 here
                    factor = len(a) if m.model.is_intensive else 1
                    p = {K.ENERGY: float(r["e"] * factor), K.FORCES: np.asarray(r["f"] * 1, dtype=float)}
                    if want_stress and periodic[i]:
                        p[K.STRESS] = np.asarray(full_3x3_to_voigt_6_stress(r["s"] * GPA), dtype=float)
                    if want_e:
                        p[K.ENERGIES] = np.asarray(r["site_energies"], dtype=float).reshape(len(a))
                    out[i][k] = p
        for a, (_, lonely) in zip(structures, built):
            members[0]._warn_isolated(a, lonely)
        return out
