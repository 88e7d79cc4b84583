"""Atomic neural networks and symmetry-function scaling of n2p2 (torch, float64)."""
from __future__ import annotations

import numpy as np
import torch

#: n2p2's EXP_LIMIT for logistic/softplus
EXP_LIMIT = 35.0


def activate(x, letter: str):
    """n2p2 activation ``letter`` (see ``global_activation_short``)."""
    if letter == "l":
        return x
    if letter == "t":
        return torch.tanh(x)
    if letter == "s":
        inner = torch.sigmoid(x.clamp(-EXP_LIMIT, EXP_LIMIT))
        return torch.where(x > EXP_LIMIT, torch.ones_like(x),
                           torch.where(x < -EXP_LIMIT, torch.zeros_like(x), inner))
    if letter == "p":
        xc = x.clamp(-EXP_LIMIT, EXP_LIMIT)
        inner = torch.log1p(torch.exp(xc))
        return torch.where(x > EXP_LIMIT, x, torch.where(x < -EXP_LIMIT, torch.zeros_like(x), inner))
    if letter == "r":
        return torch.relu(x)
    if letter == "g":
        return torch.exp(-0.5 * x * x)
    if letter == "c":
        return torch.cos(x)
    if letter == "S":
        return 1.0 - torch.sigmoid(x)
    if letter == "e":
        return torch.exp(-x)
    if letter == "h":
        return x * x
    raise ValueError(f"unknown n2p2 activation {letter!r}")


class ElementNet:
    """One element's network and SF scaling: raw G (n, nsf) -> atomic energy (n,)."""

    def __init__(self, net, scaling: np.ndarray, mode: str, smin: float, smax: float):
        self.W = [torch.as_tensor(w, dtype=torch.float64) for w in net.weights]
        self.b = [torch.as_tensor(v, dtype=torch.float64) for v in net.biases]
        self.acts = net.activations
        self.normalize = net.normalize_nodes
        gmin, gmax, gmean, gsigma = (scaling[:, k] for k in range(4))
        with np.errstate(divide="ignore", invalid="ignore"):
            if mode == "none":
                fac, shift, off = np.ones_like(gmin), np.zeros_like(gmin), 0.0
            elif mode == "center":
                fac, shift, off = np.ones_like(gmin), gmean, 0.0
            elif mode == "scale":
                fac, shift, off = (smax - smin) / (gmax - gmin), gmin, smin
            elif mode == "scalecenter":
                fac, shift, off = (smax - smin) / (gmax - gmin), gmean, smin
            else:  # scalesigma
                fac, shift, off = (smax - smin) / gsigma, gmean, smin
        fac = np.where(np.isfinite(fac), fac, 0.0)
        self.fac = torch.as_tensor(fac, dtype=torch.float64)
        self.shift = torch.as_tensor(shift, dtype=torch.float64)
        self.off = float(off)

    def scale(self, G):
        return self.off + self.fac * (G - self.shift)

    def __call__(self, G):
        """Atomic NN outputs (internal energy units) for raw SFs ``G`` (n, nsf)."""
        h = self.scale(G)
        for W, b, a in zip(self.W, self.b, self.acts):
            x = h @ W.T + b
            if self.normalize:
                x = x / W.shape[1]
            h = activate(x, a)
        return h[:, 0]

    def energy_and_grad(self, G, need_grad: bool):
        """(atomic outputs (n,), d outputs / d raw G (n, nsf) or None)."""
        if not need_grad or G.shape[0] == 0:
            with torch.no_grad():
                return self(G), None
        Gl = G.detach().clone().requires_grad_(True)
        out = self(Gl)
        (g,) = torch.autograd.grad(out.sum(), Gl)
        return out.detach(), g
