"""Native evaluator of n2p2 (2G-HDNNP) model folders: no n2p2 build needed.

``N2P2Member`` is the committee backend (``backend: n2p2, path: <folder>``),
``N2P2Calculator`` a standalone ASE calculator, ``load_model`` the reader and
``read_input_data`` reads n2p2 ``input.data`` structure files.

Symmetry functions and their analytic derivatives run in compiled numba
kernels (``kernels.py``, ``fast.py``) when numba is installed, otherwise in
PyTorch autograd (``descriptors.py``); select with ``SFEngine(model, kernel)``
or ``COMMITTEE_CALC_N2P2_KERNEL=auto|numba|torch``.  Cost is linear in the
number of atoms at fixed density: O(N n_neigh) pairs + O(N n_neigh^2/2)
triplets; ~0.33 ms/atom per energy+forces call for the H2O model (rc = 12
Bohr, ~90 neighbours) on one core (``benchmarks/n2p2_speed.py``).
"""
from .inputdata import read_input_data
from .member import N2P2Calculator, N2P2Member, neighbour_pairs
from .reader import N2P2Model, load_model

__all__ = ["N2P2Member", "N2P2Calculator", "N2P2Model", "load_model", "read_input_data",
           "neighbour_pairs"]
