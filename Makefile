# loraforge: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local cluster harness (dev/localcluster) and the test runner live in dev/.
export PYTHONPATH := $(CURDIR)/dev

TIERS ?= lint unit integration e2e

.PHONY: help venv cluster-binaries cluster cluster-down cluster-status test lint test-unit \
        test-integration test-e2e bench crds operator-local demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt operator/pyproject.toml
	@echo ">> creating $(VENV) (operator + dev tools; the trainer's torch stack is not needed here)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -r requirements-dev.txt
	$(PY) -m pip install --progress-bar off --no-build-isolation -e ./operator
	touch $@

venv: $(VENV)/.installed ## create the project's virtualenv

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

crds: venv ## regenerate crds/ from the API models
	$(PY) -m loraforge_operator.crds

test: venv ## lint + unit + integration + e2e (TIERS="unit e2e" to pick), with each tier's time
	$(PY) dev/testtiers.py $(TIERS)

lint: venv ## ruff and gofmt
	$(PY) dev/testtiers.py lint

test-unit: venv ## unit tests only (no cluster)
	$(PY) dev/testtiers.py unit

test-integration: venv ## tests against a real kube-apiserver
	$(PY) dev/testtiers.py integration

test-e2e: venv ## tests on the full local control plane
	$(PY) dev/testtiers.py e2e

bench: venv cluster-binaries ## operator benchmarks (ratios against a plain-client floor; takes ~10 minutes)
	$(PY) bench/finetunejob_bench.py

demo: cluster ## bring up the local cluster and show its fake GPU nodes
	@echo
	@echo ">> fake GPU capacity the real scheduler sees:"
	@eval "$$($(PY) -m localcluster env)" && kubectl get nodes \
	  -o custom-columns='NODE:.metadata.name,POOL:.metadata.labels.loraforge\.io/pool,GPU:.metadata.labels.nvidia\.com/gpu\.product,GPUS:.status.allocatable.nvidia\.com/gpu,CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory'
	@echo
	@echo ">> use it:   eval \"\$$(PYTHONPATH=dev $(PY) -m localcluster env)\" && kubectl get nodes"
	@echo ">> stop it:  make cluster-down"

clean: cluster-down ## stop the cluster and remove the virtualenv (cached binaries stay)
	rm -rf $(VENV)
