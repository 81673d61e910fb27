# make install | test | demo | lint  -  each sets up what it needs on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-output

.PHONY: install test demo lint clean

install: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml; on this platform pip takes its CPU build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(PY) pipeline/prepare.py --dataset synthetic --synthetic-kind motion --classes 4 --videos-per-class 20 \
		--root $(DEMO)/motion --out $(DEMO)/store

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache *.egg-info
