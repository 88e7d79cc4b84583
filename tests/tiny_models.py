"""Session-cached tiny MLIP models built at test time (filled by the backends work)."""
