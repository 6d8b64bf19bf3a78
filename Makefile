# AgentGraph. `make demo` runs the main job, `make test` runs what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: venv demo plan-demo test unit lint typecheck imports check-crds crds bench report clean \
	cluster cluster-down e2e kind-up

$(STAMP): pyproject.toml
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

## demo: the voice agent on the local real cluster, planned, placed and answering requests
demo: cluster
	$(BIN)/agentgraph plan examples/paper-worked-example.yaml
	$(BIN)/python e2e/demo.py

## plan-demo: the planner alone (no cluster): the worked example and the voice agent, explained
plan-demo: venv
	$(BIN)/agentgraph plan examples/paper-worked-example.yaml --explain
	$(BIN)/agentgraph plan examples/voice-agent.yaml --explain

## test: everything CI runs: lint, types, import layers, stale CRDs, unit and property tests,
## then the e2e suite on the local real cluster (built on first use, about 5 min cold; torn down
## afterwards unless it was already running). Always the local cluster, whatever KUBECONFIG says.
LOCAL_KUBECONFIG := $(CURDIR)/.cache/cluster/kubeconfig
test: lint typecheck imports check-crds unit
	@if $(BIN)/python e2e/cluster.py status >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory e2e KUBECONFIG=$(LOCAL_KUBECONFIG); \
	else \
		$(MAKE) --no-print-directory e2e KUBECONFIG=$(LOCAL_KUBECONFIG); rc=$$?; \
		$(MAKE) --no-print-directory cluster-down; exit $$rc; \
	fi

unit: venv
	$(BIN)/pytest -q tests

lint: venv
	$(BIN)/ruff check operator tests bench e2e

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

crds: venv
	$(BIN)/agentgraph crds --out crds
	$(BIN)/agentgraph chart --out charts/agentgraph-operator

check-crds: venv
	$(BIN)/pytest -q tests/test_crds.py

## bench: planner solve time on generated graphs; the runtime (gateway overhead per hop,
## throughput, emulated voice agent predicted vs measured; real processes, no cluster); then the
## operator on the local cluster (apply -> Ready for one 10-step graph and for 200 graphs at
## once, operator RSS); then the replanner (breach -> new plan Ready; plan changes over 10 minutes
## of noisy steady load). Tables are printed; results go to bench/results/
bench: venv
	$(BIN)/python bench/planner_bench.py --out bench/results/planner.json
	$(BIN)/python bench/runtime_bench.py --out bench/results/runtime.json
	$(BIN)/python bench/operator_bench.py --out bench/results/operator.json
	$(BIN)/python bench/replan_bench.py --out bench/results/replan.json

## report: the seed paper's evaluation (table + PNG chart in reports/)
report: venv
	$(BIN)/agentgraph report paper --out reports

## cluster: a real control plane + kwok nodes on 127.0.0.1 (binaries built once into .cache/)
cluster: venv
	$(BIN)/python e2e/cluster.py up

cluster-down: venv
	$(BIN)/python e2e/cluster.py down

## kind-up: the same pools on kind, for users with Docker; then KUBECONFIG=.cache/kind/kubeconfig make e2e
kind-up: venv
	$(BIN)/python e2e/cluster.py kind-up

## e2e: the real-cluster suite against .cache/cluster/kubeconfig (or your own KUBECONFIG)
e2e: cluster
	$(BIN)/python e2e/cluster.py stop-operator
	KUBECONFIG=$${KUBECONFIG:-$(LOCAL_KUBECONFIG)} $(BIN)/pytest -q e2e

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis bench/results reports
