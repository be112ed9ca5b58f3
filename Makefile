# Two commands, each sets up from nothing: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU machines here serve this torch from a local cache; set TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests

demo: $(STAMP)
	$(VENV)/bin/dtr plugins
	$(VENV)/bin/dtr suite configs/suites/quickstart.yaml --parallel 2
	@echo "demo: open runs/quickstart/report.md (tables) and runs/quickstart/plots/ (pictures)"

clean:
	rm -rf $(VENV) runs
