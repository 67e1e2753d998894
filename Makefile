# Two entry points for a fresh machine: `make demo` (main job) and `make test` (all checks).
# Both create .venv and install what they need; nothing installed by hand is assumed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest clean bench train

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 first: pip takes the CPU build from this machine's disk (a looser pin
	# would pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# the main job: node-level ablation versus addition on the IOI circuit of the bundled model,
# from its spec, into runs/<id>/ and the report in reports/ablation_vs_addition/ (~1-2 min)
demo: $(STAMP)
	$(BIN)/circuitsteer run analyses/ablation_vs_addition.yaml --report-out reports/ablation_vs_addition

lint: $(STAMP)
	$(BIN)/ruff check circuitsteer tests benchmarks
	$(BIN)/ruff format --check circuitsteer tests benchmarks

typecheck: $(STAMP)
	$(BIN)/pyright

# pytest exits 5 when it collects nothing; that is a failure of the suite, not a pass
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

train: $(STAMP)
	$(BIN)/python -m circuitsteer.zoo.train toy-ioi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
