"""Figure helpers shared by every science area (matplotlib on the Agg backend).

* :func:`pyplot` — ``matplotlib.pyplot`` with the Agg backend (no display needed).
* :func:`save_figure` — lay out, write atomically (never a half-written PNG) and close.
"""
from __future__ import annotations

import io

from .fileio import atomic_write_bytes


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120) -> str:
    """``fig.tight_layout()``, write ``fig`` as PNG to ``path`` atomically, close it; return the path."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
