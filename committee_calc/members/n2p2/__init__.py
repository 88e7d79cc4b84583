"""Native evaluator of n2p2 (2G-HDNNP) model folders: no n2p2 build needed.

``N2P2Member`` is the committee backend (``backend: n2p2, path: <folder>``),
``N2P2Calculator`` a standalone ASE calculator, ``load_model`` the reader and
``read_input_data`` reads n2p2 ``input.data`` structure files.
"""
from .inputdata import read_input_data
from .member import N2P2Calculator, N2P2Member, neighbour_pairs
from .reader import N2P2Model, load_model

__all__ = ["N2P2Member", "N2P2Calculator", "N2P2Model", "load_model", "read_input_data",
           "neighbour_pairs"]
