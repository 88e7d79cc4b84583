"""Shared pytest setup: deterministic, single-threaded, headless."""
import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# fixture modules contributed per area (each a plain module in tests/)
pytest_plugins = ["tiny_models"]
