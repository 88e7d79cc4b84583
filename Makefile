# The README's two commands:  `make demo`  and  `make test`  (CI runs `make lint` first).
# Both install what they need first (install/install.sh is idempotent).
PY := .venv/bin/python
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD := 1
export OMP_NUM_THREADS ?= 1
export MPLBACKEND := Agg

.PHONY: install demo lint test test-slow test-all docs clean
install:
	bash install/install.sh

demo: install
	$(PY) examples/demo.py

# ruff, configured in pyproject.toml [tool.ruff]; installed by the `test` extra of setup.cfg
lint: install
	$(PY) -m ruff check committee_calc drivers tests benchmarks examples

test: install
	$(PY) -m pytest -q -n 2 --timeout=900 tests

test-slow: install
	$(PY) -m pytest -q -m slow --timeout=3600 tests

test-all: install
	$(PY) -m pytest -q -m "slow or not slow" --timeout=3600 tests

# the documentation site (mkdocs-material + mkdocstrings, `docs` extra) into build/site; --strict as in CI
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf .venv build *.egg-info .pytest_cache
