# The two commands of the README: `make demo` and `make test`. Both create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch lies on local disk; installing it first keeps pip from resolving a CUDA build.
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint docs figures bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev,deepspeed,eval,docs]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/salt-demo --config configs/demo.yaml

test: install
	$(PY) -m pytest -q -m "not slow" --timeout 900

test-slow: install
	$(PY) -m pytest -q -m slow --timeout 3600

lint: install
	$(VENV)/bin/ruff check .

# The site into build/site/ (mkdocs.yml): strict, so a broken link, anchor or API name fails it; offline.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Every figure of README.md and docs/ from the benchmarks' committed JSON (benchmarks/results/) into docs/figures/.
figures: install
	$(PY) scripts/figures.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
