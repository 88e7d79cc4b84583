"""The last linear layers of a MACE model as LLPR features (:class:`LastLayer`).

A MACE energy is linear in the weights w of the final ``Linear`` of every readout; their scalar
inputs, scaled as the model scales its readouts, are the per-atom last-layer features of LLPR
(Bigi, Chong, Ceriotti & Grasselli, Mach. Learn.: Sci. Technol. 5, 045018 (2024)).  Read from
the eager model before it is scripted; used by :mod:`committee_calc.members.mace_llpr`.
Errors: ConfigError for a readout kind other than ``LinearReadoutBlock`` /
``NonLinearReadoutBlock``.
"""
from __future__ import annotations

import copy

import numpy as np

from ..errors import ConfigError


class LastLayer:
    """The last linear layers of an eager MACE model (read before it is scripted; the readouts'
    first layers are copied) as weights ``w`` (D,) and :meth:`atom_features` (N, D), with
    ``Σ_atoms atom_features · w = scale · Σ readout energies`` for the head of :meth:`select`."""

    def __init__(self, model):
        import torch

        dims = [int(p.linear.irreps_out.dim) for p in model.products]
        offsets = np.cumsum([0] + dims)
        scale = getattr(getattr(model, "scale_shift", None), "scale", None)
        self.scales = None if scale is None else torch.atleast_1d(scale).detach().clone()
        self.blocks = []
        for i, r in enumerate(model.readouts):
            f = len(dims) - 1 if len(model.readouts) == 1 else i
            kind = type(r).__name__
            if kind not in ("LinearReadoutBlock", "NonLinearReadoutBlock"):
                raise ConfigError(f"LLPR supports MACE readouts LinearReadoutBlock and "
                                  f"NonLinearReadoutBlock; this model has {kind}")
            lin = r.linear if kind == "LinearReadoutBlock" else r.linear_2
            ref, pre = next(lin.parameters()), None
            with torch.no_grad():
                eye = torch.eye(lin.irreps_in.dim, dtype=ref.dtype, device=ref.device)
                weights = lin(eye) - lin(torch.zeros_like(eye[:1]))  # (d_in, heads)
                if kind == "NonLinearReadoutBlock":  # linear_1 as a matrix and offset (no e3nn call)
                    l1 = r.linear_1
                    eye1 = torch.eye(l1.irreps_in.dim, dtype=ref.dtype, device=ref.device)
                    off = l1(torch.zeros_like(eye1[:1]))
                    pre = (l1(eye1) - off, off, copy.deepcopy(r.non_linearity).requires_grad_(False))
            scalars = [k for (_, ir), sl in zip(lin.irreps_in, lin.irreps_in.slices())
                       if ir.l == 0 and ir.p == 1 for k in range(sl.start, sl.stop)]
            heads = int(getattr(r, "num_heads", 1)) if pre is not None else 1
            self.blocks.append([int(offsets[f]), int(offsets[f + 1]), pre, scalars, weights, heads])
        self.w = self.scale = None

    def select(self, head: int) -> None:
        """Fix the head (index): its weight column, the hidden channels of its mask, its scale."""
        import torch
        ws = []
        for b in self.blocks:
            idx, weights, heads = b[3], b[4], b[5]
            if heads > 1:  # mace's mask_head keeps the channel block of the node's head
                n = weights.shape[0] // heads
                idx = [k for k in idx if head * n <= k < (head + 1) * n]
            b[3] = torch.tensor(idx, dtype=torch.long, device=weights.device)
            ws.append(weights[idx, head])
        self.scale, self.w = 1.0 if self.scales is None else float(self.scales[head]), torch.cat(ws)

    dim = property(lambda self: int(self.w.shape[0]))

    def atom_features(self, node_feats):
        """(N, D) per-atom last-layer features from MACE's ``node_feats`` output."""
        import torch
        xs = []
        for lo, hi, pre, idx, _, _ in self.blocks:
            x = node_feats[:, lo:hi]
            xs.append((x if pre is None else pre[2](torch.addmm(pre[1], x, pre[0])))[:, idx])
        return self.scale * torch.cat(xs, dim=1)


__all__ = ["LastLayer"]
