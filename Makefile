# Entry points of the project (docs/contract.md, section 1). `make` alone lists them.
#
# The stack commands live in scripts/stack.sh; data, logs and pid files go to .local/.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo

# In CI a missing server is a test failure, never a skip (read by cctv-testkit).
ifeq ($(CI),true)
export CCTV_REQUIRE_SERVERS := 1
endif

.PHONY: help demo up down status servers-up servers-down cluster-up cluster-down cluster-status build test bench fuzz fmt lint clean-local

help: ## list the targets
	@echo "usage: make <target>"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-13s %s\n", $$1, $$2}'

demo: ## install what is missing, start the stack, publish a simulated day, print totals, stop (KEEP=1 keeps it)
	scripts/demo.sh

up: ## start the local stack in the background (NATS, ClickHouse, both services; TLS=1: every hop in TLS)
	scripts/stack.sh up

down: ## stop the local stack
	scripts/stack.sh down

status: ## show what of the local stack runs
	scripts/stack.sh status

servers-up: ## start only NATS and ClickHouse of the local stack
	scripts/stack.sh servers-up

servers-down: ## stop only NATS and ClickHouse of the local stack
	scripts/stack.sh servers-down

cluster-up: ## the cluster layout on loopback: 3 NATS nodes, ZooKeeper, ClickHouse 2 shards x 2 replicas, two of each service
	scripts/cluster.sh up

cluster-down: ## stop the loopback cluster (data kept in .local/cluster)
	scripts/cluster.sh down

cluster-status: ## show what of the loopback cluster runs
	scripts/cluster.sh status

build: ## build the release binaries
	$(CARGO) build --release --bins

# The tests start their own servers on free ports; they only need the binaries. A
# server that cannot start fails the tests that need it (never a skip).
# Besides the servers: chdb-core (current ClickHouse, for tests/pipeline/chdb*.rs)
# and Debian's chromium (for the report test).
test: ## every test, integration tests against real servers the tests start
	@{ CCTV_CLICKHOUSE_URL= scripts/install-servers.sh && scripts/install-chdb.sh \
		&& scripts/install-chromium.sh; } || { \
		if [ "$${CCTV_REQUIRE_SERVERS:-}" = 1 ]; then exit 1; fi; \
		echo "make test: warning: servers missing, tests that need them will fail" >&2; }
	$(CARGO) test --workspace --all-targets

BENCH_EVENTS ?= 1000000
bench: ## the benchmarks (criterion, then end to end with BENCH_EVENTS offences); results go to BENCHMARKS.md
	$(CARGO) bench -p cctv-benches
	$(CARGO) build --release --bins
	target/release/cctv-bench-e2e --events $(BENCH_EVENTS) --output BENCHMARKS.md

FUZZ_SECONDS ?= 60
fuzz: ## mutation-fuzz every decoder for FUZZ_SECONDS (default 60) in total; FUZZ_SEED=n replays a run
	$(CARGO) run --release -p cctv-normalize --example fuzz -- $(FUZZ_SECONDS)

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## check formatting and clippy warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-local: ## stop the stack and delete .local/ (all local data)
	scripts/stack.sh down
	rm -rf .local
