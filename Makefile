# shardline: the commands README.md names. Everything it needs is installed by the
# project's own scripts into .tools/ (git-ignored); nothing by hand.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# CI builds once from scratch: incremental-compilation caches would only take disk.
ifdef CI
export CARGO_INCREMENTAL ?= 0
endif
WITH_EMULATORS := infra/local/with-emulators.sh

.PHONY: help up down install fmt fmt-check clippy unit test

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## install the pinned emulators (moto, kinesis-local) into .tools/
	infra/local/install.sh emulators

up: ## start the local emulators on 127.0.0.1 (Kinesis :4568, DynamoDB/SQS :4566)
	infra/local/up.sh

down: ## stop the local emulators (by pid)
	infra/local/down.sh

fmt: ## format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## unit and property tests only (no emulator)
	$(CARGO) test --workspace --lib --bins

test: fmt-check clippy lint-template ## the whole suite: fmt, clippy, unit, property and emulator tests
	$(WITH_EMULATORS) $(CARGO) test --workspace --all-targets

TOOLS_BIN := .tools/venv-tools/bin
export SAM_CLI_TELEMETRY := 0

.PHONY: tools lint-template
tools: ## install the pinned build and lint tools (cfn-lint, sam, cargo-lambda, zig, checkov) into .tools/
	infra/local/install.sh tools checkov

lint-template: tools ## validate template.yaml: cfn-lint, sam validate --lint, checkov
	$(TOOLS_BIN)/cfn-lint template.yaml
	$(TOOLS_BIN)/sam validate --lint --template template.yaml --region us-east-1
	.tools/venv-checkov/bin/checkov -f template.yaml --quiet --compact --skip-download

.PHONY: build deploy
build: ## sam build: both functions as arm64 Lambda binaries (cargo-lambda + zig), checked with `file`
	infra/local/install.sh tools arm64
	PATH="$(CURDIR)/$(TOOLS_BIN):$$PATH" $(TOOLS_BIN)/sam build --template template.yaml
	@for f in FraudScorerFunction WindowAggregatorFunction; do \
	  out=$$(file -b .aws-sam/build/$$f/bootstrap); echo "$$f: $$out"; \
	  case "$$out" in *ELF*aarch64*|*ELF*ARM\ aarch64*) ;; *) echo "$$f is not an aarch64 ELF binary"; exit 1;; esac; \
	done

deploy: build ## sam deploy with samconfig.toml defaults (add GUIDED=1 the first time)
	PATH="$(CURDIR)/$(TOOLS_BIN):$$PATH" $(TOOLS_BIN)/sam deploy $(if $(GUIDED),--guided,)

.PHONY: soak
soak: ## the pipeline under faults, crashes, a runner kill and a reshard, checked against an oracle (EVENTS=3000; RELIABILITY.md)
	$(CARGO) build -p shardline
	$(WITH_EMULATORS) target/debug/shardline soak --events $(or $(EVENTS),3000) $(SOAK_ARGS)

.PHONY: demo
demo: ## the whole pipeline locally: emulators, resources, traffic, both functions, summary (KEEP=1 keeps the emulators)
	$(CARGO) build -p shardline
	SHARDLINE_KEEP_EMULATORS=$(if $(KEEP),1,0) $(WITH_EMULATORS) target/debug/shardline demo $(DEMO_ARGS)

.PHONY: bench
bench: ## figures of BENCHMARKS.md: criterion benches, then `shardline bench` (release) against the emulators
	$(CARGO) build --release -p shardline -p fraud-scorer -p window-aggregator
	target/release/shardline bench --throughput-only
	$(WITH_EMULATORS) target/release/shardline bench --skip-throughput

.PHONY: fuzz
fuzz: ## fuzz the decoders with afl.rs (TARGET=envelope|kpl|txn|all, FUZZ_SECONDS per target, default 60); see RELIABILITY.md
	fuzz/run.sh $(or $(TARGET),all) $(or $(FUZZ_SECONDS),60)
