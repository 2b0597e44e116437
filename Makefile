# Two commands do all the set-up on a fresh machine (Python 3.11+ and git):
#   make run    install, then serve on API_HOST:API_PORT (default 127.0.0.1:8000)
#   make test   install, then lint and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint install install-dev clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/python main.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install-dev lint
	scripts/run-tests

# Benchmark (not part of `make test`): the service vs bare passthroughs and the LiteLLM proxy.
# Installs wrk from Debian if missing, matplotlib/py-spy into .venv, LiteLLM into its own bench/.venv-litellm.
# Results: bench/results/latest.json and docs/img/benchmark.png. BENCH_ARGS="--duration 5 --skip-litellm" to vary.
BENCH_ARGS ?=
bench: install-dev
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	test -x bench/.venv-litellm/bin/litellm || ($(PYTHON) -m venv bench/.venv-litellm && \
		bench/.venv-litellm/bin/python -m pip install --quiet -r bench/requirements-litellm.txt)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.plot

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
