"""Read an n2p2 model folder: ``input.nn``, ``scaling.data``, ``weights.ZZZ.data``.

The conventions follow n2p2 v2.3.0 (see ``tests/data/n2p2/README.md``):

* elements are indexed in order of atomic number, not in ``elements`` order;
* each element's symmetry functions are sorted (``symfuncs.sort_key``), and
  that order defines the network inputs and the rows of ``scaling.data``;
* ``weights.%03d.data`` (atomic number) holds one connection per line with
  explicit layer/neuron indices, which are used directly.

The result is a frozen :class:`N2P2Model` in the model's own units (lengths
and energies of the training data; internal normalisation is kept separate).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from ase.data import atomic_numbers

from ...errors import ModelFileError
from .symfuncs import parse_symfunction, sort_key

#: keywords that change the prediction and that this evaluator does not implement
UNSUPPORTED_KEYWORDS = {
    "element_hidden_layers_short": "per-element network depth",
    "element_nodes_short": "per-element network width",
    "element_activation_short": "per-element activation functions",
    "symfunction_short_weighted": "weighted symmetry functions",
}
#: activation letters of n2p2 (``global_activation_short``)
ACTIVATIONS = {"l", "t", "s", "p", "r", "g", "c", "S", "e", "h"}
SCALING_MODES = ("none", "scale", "center", "scalecenter", "scalesigma")


@dataclass(frozen=True)
class Network:
    """One atomic network: ``weights[l]`` has shape (n_out, n_in), ``biases[l]`` (n_out,)."""

    weights: tuple
    biases: tuple
    activations: str
    normalize_nodes: bool = False


@dataclass(frozen=True)
class N2P2Model:
    """Everything needed to evaluate an n2p2 (2G-HDNNP) potential.

    Lengths/energies are in the model's own units; ``conv_length`` and
    ``conv_energy`` map them to n2p2's internal (normalised) units.
    """

    folder: str
    elements: tuple                  # symbols sorted by atomic number (n2p2 order)
    symfuncs: dict                   # symbol -> tuple[SymFunc] in n2p2 sorted order
    scaling: dict                    # symbol -> (nsf, 4) array: Gmin, Gmax, Gmean, Gsigma
    scaling_mode: str                # one of SCALING_MODES
    scale_min: float
    scale_max: float
    networks: dict                   # symbol -> Network
    mean_energy: float = 0.0         # per atom, model energy unit
    conv_energy: float = 1.0
    conv_length: float = 1.0
    atom_energy: dict = field(default_factory=dict)  # symbol -> offset (model energy unit)
    cutoff_type: int = 1
    cutoff_alpha: float = 0.0

    @property
    def cutoff(self) -> float:
        """Largest symmetry-function cutoff, in the model's length unit."""
        return max(sf.rc for sfs in self.symfuncs.values() for sf in sfs)


def _read_lines(path):
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except OSError as exc:
        raise ModelFileError(f"cannot read n2p2 file {path!r}: {exc}") from exc


def _float(tok, path, lineno, what):
    try:
        return float(tok)
    except ValueError:
        raise ModelFileError(f"{path}:{lineno}: {what} must be a number, got {tok!r}") from None


def parse_input_nn(path: str) -> dict:
    """Parse ``input.nn`` into a dict of settings (symmetry functions kept as lines)."""
    settings = {"symfunction": [], "atom_energy": {}}
    for lineno, raw in enumerate(_read_lines(path), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tok = line.split()
        key, args = tok[0], tok[1:]
        if key in ("symfunction_short", "symfunction"):
            settings["symfunction"].append((lineno, args))
        elif key == "atom_energy":
            if len(args) < 2:
                raise ModelFileError(f"{path}:{lineno}: atom_energy needs '<element> <energy>'")
            settings["atom_energy"][args[0]] = _float(args[1], path, lineno, "atom_energy")
        elif key in UNSUPPORTED_KEYWORDS:
            raise ModelFileError(
                f"{path}:{lineno}: keyword {key!r} ({UNSUPPORTED_KEYWORDS[key]}) is not supported "
                "by the native n2p2 evaluator; use the LAMMPS hdnnp route for this model"
            )
        elif key == "nnp_generation" and args and args[0] != "2":
            raise ModelFileError(
                f"{path}:{lineno}: nnp_generation {args[0]} (charge-equilibrated 4G-HDNNP) is not "
                "supported by the native n2p2 evaluator; only 2G short-range models are"
            )
        else:
            settings[key] = (lineno, args)
    return settings


def _scaling_mode(settings) -> str:
    scale = "scale_symmetry_functions" in settings
    center = "center_symmetry_functions" in settings
    sigma = "scale_symmetry_functions_sigma" in settings
    if sigma:
        if scale or center:
            raise ModelFileError("input.nn combines scale_symmetry_functions_sigma with other "
                                 "scaling keywords; n2p2 allows only one scaling mode")
        return "scalesigma"
    return {(True, True): "scalecenter", (True, False): "scale",
            (False, True): "center", (False, False): "none"}[(scale, center)]


def _setting(settings, key, default=None, required=False, path="input.nn"):
    if key not in settings:
        if required:
            raise ModelFileError(f"{path}: required keyword {key!r} is missing")
        return default
    return settings[key][1]


def read_scaling(path: str, counts: dict, elements: tuple) -> dict:
    """Read ``scaling.data`` rows element block by element block (Z order)."""
    rows = []
    for lineno, raw in enumerate(_read_lines(path), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        if len(tok) not in (5, 6):
            raise ModelFileError(f"{path}:{lineno}: expected 5 or 6 columns "
                                 "(e_index sf_index Gmin Gmax Gmean [Gsigma]), got {len(tok)}")
        vals = [_float(t, path, lineno, "scaling value") for t in tok]
        rows.append(vals + [np.nan] * (6 - len(vals)))
    need = sum(counts[e] for e in elements)
    if len(rows) != need:
        detail = ", ".join(f"{e}: {counts[e]}" for e in elements)
        raise ModelFileError(
            f"{path} has {len(rows)} data rows but input.nn defines {need} symmetry functions "
            f"({detail}); the scaling file does not belong to this input.nn"
        )
    out, start = {}, 0
    for ie, el in enumerate(elements, 1):
        block = np.array(rows[start:start + counts[el]], dtype=float)
        start += counts[el]
        if not (np.all(block[:, 0] == ie) and np.all(block[:, 1] == np.arange(1, len(block) + 1))):
            raise ModelFileError(f"{path}: rows for element {el} (index {ie}) are out of order; "
                                 "expected e_index/sf_index to count up block by block")
        out[el] = block[:, 2:6].copy()
    return out


def read_weights(path: str, layer_sizes: list, activations: str, normalize: bool) -> Network:
    """Read one ``weights.ZZZ.data`` file for the topology ``layer_sizes``."""
    W = [np.full((layer_sizes[k + 1], layer_sizes[k]), np.nan) for k in range(len(layer_sizes) - 1)]
    b = [np.full(layer_sizes[k + 1], np.nan) for k in range(len(layer_sizes) - 1)]
    n_read = 0
    for lineno, raw in enumerate(_read_lines(path), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        try:
            value = float(tok[0])
            if tok[1] == "a" and len(tok) >= 7:
                ls, ns, le, ne = (int(t) for t in tok[3:7])
                if le != ls + 1:
                    raise ValueError
                W[ls][ne - 1, ns - 1] = value
            elif tok[1] == "b" and len(tok) >= 5:
                lb, nb = int(tok[3]), int(tok[4])
                if lb < 1:
                    raise ValueError
                b[lb - 1][nb - 1] = value
            else:
                raise ValueError
        except (ValueError, IndexError):
            raise ModelFileError(
                f"{path}:{lineno}: cannot read connection {s!r}; the network in input.nn "
                f"has layer sizes {layer_sizes}") from None
        n_read += 1
    expected = sum(w.size + v.size for w, v in zip(W, b))
    if n_read != expected or any(np.isnan(w).any() for w in W) or any(np.isnan(v).any() for v in b):
        raise ModelFileError(
            f"{path} has {n_read} connections but the network {layer_sizes} needs {expected}; "
            "the weight file does not match input.nn (number of symmetry functions or nodes)"
        )
    return Network(tuple(W), tuple(b), activations, normalize)


def load_model(folder: str, weights_pattern: str = "weights.{z:03d}.data") -> N2P2Model:
    """Read the n2p2 model in ``folder`` (``input.nn``, ``scaling.data``, weights)."""
    folder = os.path.abspath(os.path.expanduser(str(folder)))
    if not os.path.isdir(folder):
        raise ModelFileError(f"n2p2 model folder {folder!r} does not exist or is not a folder")
    nn_path = os.path.join(folder, "input.nn")
    if not os.path.exists(nn_path):
        raise ModelFileError(f"{folder!r} has no input.nn; point 'path' at an n2p2 model folder")
    st = parse_input_nn(nn_path)
    symbols = _setting(st, "elements", required=True, path=nn_path)
    for s in symbols:
        if s not in atomic_numbers:
            raise ModelFileError(f"{nn_path}: unknown element {s!r} in 'elements'")
    nel = _setting(st, "number_of_elements", path=nn_path)
    if nel is not None and int(nel[0]) != len(symbols):
        raise ModelFileError(f"{nn_path}: number_of_elements {nel[0]} but {len(symbols)} elements listed")
    elements = tuple(sorted(set(symbols), key=lambda s: atomic_numbers[s]))
    index = {s: i for i, s in enumerate(elements)}

    norm = [_setting(st, k) for k in ("mean_energy", "conv_energy", "conv_length")]
    if any(v is not None for v in norm) and not all(v is not None for v in norm):
        raise ModelFileError(f"{nn_path}: mean_energy, conv_energy and conv_length must be given together")
    mean_energy, conv_energy, conv_length = ((float(v[0]) for v in norm) if norm[0] is not None
                                             else (0.0, 1.0, 1.0))
    ct = _setting(st, "cutoff_type", default=["1"], path=nn_path)
    cutoff_type, cutoff_alpha = int(ct[0]), float(ct[1]) if len(ct) > 1 else 0.0
    if cutoff_type not in range(9):
        raise ModelFileError(f"{nn_path}: unsupported cutoff_type {cutoff_type}; n2p2 knows 0-8")
    if not 0.0 <= cutoff_alpha < 1.0:
        raise ModelFileError(f"{nn_path}: cutoff_type alpha must satisfy 0 <= alpha < 1, got {cutoff_alpha}")

    sfs = {e: [] for e in elements}
    for lineno, args in st["symfunction"]:
        sf = parse_symfunction(args, index, f"{nn_path}:{lineno}", cutoff_type, cutoff_alpha, lineno)
        sfs[sf.element].append(sf)
    for e in elements:
        if not sfs[e]:
            raise ModelFileError(f"{nn_path}: element {e} has no symmetry functions")
        sfs[e] = tuple(sorted(sfs[e], key=lambda f: sort_key(f, conv_length)))

    nhid = int(_setting(st, "global_hidden_layers_short", required=True, path=nn_path)[0])
    nodes = [int(n) for n in _setting(st, "global_nodes_short", required=True, path=nn_path)[:nhid]]
    acts = "".join(_setting(st, "global_activation_short", required=True, path=nn_path)[:nhid + 1])
    if len(nodes) != nhid or len(acts) != nhid + 1:
        raise ModelFileError(f"{nn_path}: need {nhid} node counts and {nhid + 1} activations")
    bad = sorted(set(acts) - ACTIVATIONS)
    if bad:
        raise ModelFileError(f"{nn_path}: unsupported activation(s) {bad}; n2p2 letters are {sorted(ACTIVATIONS)}")
    normalize = "normalize_nodes" in st

    networks = {}
    for e in elements:
        wpath = os.path.join(folder, weights_pattern.format(z=atomic_numbers[e]))
        if not os.path.exists(wpath):
            raise ModelFileError(f"weight file for element {e} missing: {wpath!r}")
        networks[e] = read_weights(wpath, [len(sfs[e])] + nodes + [1], acts, normalize)

    mode = _scaling_mode(st)
    spath = os.path.join(folder, "scaling.data")
    if mode != "none" and not os.path.exists(spath):
        raise ModelFileError(f"{folder!r} has no scaling.data but input.nn asks for SF scaling")
    counts = {e: len(sfs[e]) for e in elements}
    scaling = read_scaling(spath, counts, elements) if os.path.exists(spath) else {
        e: np.zeros((counts[e], 4)) for e in elements}
    if mode == "scalesigma" and any(np.isnan(scaling[e][:, 3]).any() for e in elements):
        raise ModelFileError(f"{spath} has no sigma column but input.nn uses scale_symmetry_functions_sigma")
    unknown = sorted(set(st["atom_energy"]) - set(elements))
    if unknown:
        raise ModelFileError(f"{nn_path}: atom_energy given for element(s) {unknown} not in 'elements'")
    smin = float(_setting(st, "scale_min_short", default=["0.0"])[0])
    smax = float(_setting(st, "scale_max_short", default=["1.0"])[0])
    return N2P2Model(folder, elements, {e: sfs[e] for e in elements}, scaling, mode, smin, smax,
                     networks, mean_energy, conv_energy, conv_length, dict(st["atom_energy"]),
                     cutoff_type, cutoff_alpha)
