# make install | test | test-fast | demo | mlflow-ui | lint  -  each sets up what it needs on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-output

.PHONY: install system-packages test test-fast demo mlflow-ui lint clean

install: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml; on this platform pip takes its CPU build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# What the suite needs beyond Python, from Debian's packages where the machine lacks them: PostgreSQL
# (tests/cluster's MLflow backend) and Chromium with its driver (the MLflow UI test). sudo where not root.
system-packages:
	@need=""; \
	{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	command -v chromedriver >/dev/null || need="$$need chromium-driver"; \
	[ -z "$$need" ] && exit 0; \
	command -v apt-get >/dev/null || { echo "make test needs these Debian packages:$$need; install them" \
		"(or their equivalents) and run it again" >&2; exit 1; }; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	echo "make test: installing$$need"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$need >/dev/null

test: install system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# The tier to run on every change (under 3 minutes on 2 cores): all but the tests marked slow - whole
# training runs, the multi-node cluster, the motion fits, the docs' commands. It needs no system package.
test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# The demo is self-contained: its MLflow store, checkpoints and reports live under $(DEMO)/home.
DEMO_ENV = COST_HOME=$(abspath $(DEMO))/home RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
DEMO_DB = sqlite:///$(abspath $(DEMO))/home/mlflow.db
ARCHS   ?= c2d,c3d,cost_a,cost_b

demo: install
	rm -rf $(DEMO)
	$(DEMO_ENV) $(PY) pipeline/prepare.py --dataset synthetic --synthetic-kind motion --classes 4 \
		--videos-per-class 75 --stride 4 --root $(DEMO)/motion --out $(DEMO)/store
	$(DEMO_ENV) $(PY) results/compare.py --config configs/tiny_synthetic.yaml --archs $(ARCHS) --name demo \
		--out $(DEMO)/report data.store=$(DEMO)/store
	@echo "Plots: $(DEMO)/report/analysis/*/*.png. MLflow UI: run 'make mlflow-ui' and open the link it prints"

mlflow-ui: install
	@$(DEMO_ENV) $(PY) -c 'from train import tracking as t; print("Open", t.ui_url("http://127.0.0.1:5000", \
		t.experiment_id("$(DEMO_DB)", "cost-demo")))'
	$(DEMO_ENV) $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_DB) \
		--host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache *.egg-info
