# Two commands, each sets up from nothing: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU machines here serve this torch from a local cache; set TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test lint typecheck test-quick mutate mutate-ci demo setup clean figures figures-check fashion-data chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@$(MAKE) --no-print-directory fashion-data
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST's original IDX files from Debian's package (no download at run time); where apt and root are
# missing, say how to install them (the tests that need them skip with the same line).
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  || echo "setup: could not install dataset-fashion-mnist; the Fashion-MNIST tests will skip"; \
	else echo "setup: Fashion-MNIST is not installed: as root, apt-get install dataset-fashion-mnist"; fi

# Headless Chromium from Debian's package: the test that opens a suite's report.html in a browser (it skips
# with one line where chromium is missing); installed the same way as the Fashion-MNIST files.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null \
	  || echo "setup: could not install chromium; the report.html browser test will skip"; \
	else echo "setup: chromium is not installed: as root, apt-get install chromium"; fi

# CI runs `make test`: lint, then types, then every test (unit, parity and the slow integration runs), on two
# pytest-xdist workers (one per core; a test file stays on one worker). Files go out in collection order
# (--no-loadscope-reorder): the slow integration files first, the many short unit files last to fill the gaps;
# xdist's default order (most tests first) left a one-test, minute-long file for the end while a core idled.
test: lint typecheck
	$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

lint: $(STAMP)
	$(PY) -m ruff check dtr_plugins tests benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

# The quick local loop: unit and parity tests only (tests/integration is marked slow).
test-quick: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -m "not slow" tests

# Mutation testing (mutmut, configured in pyproject.toml) over the math modules; slow, not part of CI.
# MUTATE_ARGS narrows it, e.g. `make mutate MUTATE_ARGS="dtr_plugins.strategies.dtr*"` (see docs/testing.md).
MUTATE_ARGS ?=
mutate: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m mutmut run $(MUTATE_ARGS)
	$(PY) -m mutmut results
	$(PY) scripts/mutation_score.py

# A CI-sized subset on demand (about 400 mutants: DTR's strategy, continuous routing, sliced execution and
# activation checkpointing, gradient accumulation, the EMA rules); see docs/testing.md for its time here.
MUTATE_CI = "dtr_plugins.strategies.dtr*" "dtr_plugins.core.continuous_routing*" "dtr_plugins.core.compute*" \
	"dtr_plugins.training.accumulate*" "dtr_plugins.ema*"
mutate-ci: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m mutmut run $(MUTATE_CI)
	$(PY) scripts/mutation_score.py $(MUTATE_CI)

demo: $(STAMP)
	$(VENV)/bin/dtr plugins
	$(VENV)/bin/dtr suite configs/suites/quickstart.yaml --parallel 3
	@echo "demo: open runs/quickstart/report.md (tables) and runs/quickstart/plots/ (pictures); .venv/bin/dtr runs lists the runs"

# Rebuild every measured table of README.md and docs/ from the committed raw results (benchmarks/results-*/):
# the blocks between <!-- figures:NAME --> and <!-- /figures:NAME -->; offline, seconds. figures-check changes nothing.
figures: $(STAMP)
	$(PY) scripts/figures.py

figures-check: $(STAMP)
	$(PY) scripts/figures.py --check

clean:
	rm -rf $(VENV) runs
