# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean venv

venv: $(STAMP)

# Installs the tested versions, exactly (deploy/constraints.txt); pyproject.toml holds the ranges.
$(STAMP): pyproject.toml deploy/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade -c deploy/constraints.txt pip
	$(BIN)/pip install --quiet -c deploy/constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ironsight demo

# The default suite: everything but the slow end-to-end and real-cluster tests (< 15 min).
test: $(STAMP)
	$(BIN)/ruff check cluster jobs robustness tests benchmarks
	$(BIN)/python -m pytest -m "not gpu and not slow and not cluster" --timeout=600 $(PYTEST_ARGS)

# Kill-and-resume, the demo, a real token-protected `ray start --head`: CI runs these too.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "(slow or cluster) and not gpu" --timeout=900 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cluster jobs robustness tests benchmarks

# Every row of issue 7's performance table, one table at the end (benchmarks/results/):
# `make bench BENCH_ARGS=--quick` for small sizes, BENCH_ARGS="--only resume,plan" for a subset.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
