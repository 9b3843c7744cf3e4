# medret: set up, run the demo, run the tests. See README.md.
PY        ?= python3.11
VENV      ?= .venv
CORES     ?= all
BIN       := $(VENV)/bin

# Never reach for a model hub (a miss costs ~50 s of retries before it fails).
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1

.PHONY: setup demo test lint clean
setup: $(VENV)/.installed

# pip compiles bytecode at install time; with PYTHONDONTWRITEBYTECODE set, an installer that
# skips it makes every workflow job recompile torch (~5 s each).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import medret, torch, torchvision, snakemake"
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/snakefmt --check Snakefile workflow/rules && $(BIN)/snakemake --lint

# Only what the workflow regenerates: the demo's generated data (resources/demo), never downloaded weights.
clean:
	rm -rf results logs .snakemake resources/demo
