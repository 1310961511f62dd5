# operando-monitor: `make demo` runs simulator → daemon → dashboard; `make test` runs the suite.
# Both create .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint chromium bench bench-gpu quantize clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned; install it first so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,train,bluesky,epics,plots,cluster,queueserver,queueserver-test,tiled,tiled-test]'
	touch $(STAMP)

# Debian chromium for the browser tests and redis-server for the queue-server tests (a real
# RE Manager needs it): installed when missing and we are root.
chromium:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian$$missing for the browser and queue-server tests"; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	else \
		echo "WARNING:$$missing missing and not root: browser / queue-server tests will SKIP"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: $(STAMP) chromium lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/operando-monitor demo $(DEMO_ARGS)

bench: $(STAMP)
	$(VENV)/bin/operando-monitor bench ingest --json bench/ingest.json

# The GPU path (torch CUDA fp16/bf16, CUDA graphs; seed-size XCT volume): skips cleanly without CUDA.
bench-gpu: $(STAMP)
	$(VENV)/bin/operando-monitor bench gpu --json bench/gpu.json

# int8 siblings of the segmentation models (re-run after retraining them).
quantize: $(STAMP)
	$(VENV)/bin/operando-monitor quantize xct_unet_fast xct_transforcnn xct_ensemble

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
