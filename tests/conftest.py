"""Shared pytest setup: deterministic, single-threaded, headless."""
import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# fixture modules contributed per area (each a plain module in tests/)
pytest_plugins = ["tiny_models"]


import pytest  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (timings and round-off independent of the machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
