# Ticketing — the two commands a newcomer needs are `make dev` and `make test`.
#
# Cargo honours CARGO_TARGET_DIR if set. The `dev` launcher finds the service
# binaries next to its own executable, so it is run from the target dir it was
# built into, right after the workspace build that built it: not through
# `cargo run -p devstack`, which resolves features for devstack alone and
# builds mongodb, common and devstack once more (minutes on 2 cores, twice
# per `make test` from a fresh clone).

CARGO ?= cargo

# One target directory shared by every clone (as .ci/run does): a fresh clone
# builds only what differs. Set CARGO_TARGET_DIR to build elsewhere.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ticketing/target
# Binaries built in another clone may be reused from that shared directory:
# the launcher, the tests and the bench use the checkout they are run in.
export TICKETING_ROOT := $(CURDIR)
DEV := "$(CARGO_TARGET_DIR)/debug/dev"

.DEFAULT_GOAL := help
.PHONY: help dev test bench release check-deploy fuzz build build-tests fmt lint clean-dev bootstrap

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

bootstrap: ## Install local infrastructure into .dev/ (idempotent, fast on re-run)
	@bash scripts/bootstrap.sh

# The installs (network) and the workspace build (CPU) run side by side: on a
# fresh machine bootstrap spends minutes downloading (apt, PyPI, npm) while
# the CPU would otherwise wait. Neither needs the other.
dev: ## Run the fleet locally behind http://localhost:8080 (Ctrl-C stops it; ARGS="--skip a,b")
	@$(MAKE) --no-print-directory -j2 bootstrap build
	$(DEV) up $(ARGS)

# The tests run against throwaway infrastructure that `dev infra` starts, unless
# TEST_MONGO_URI, TEST_NATS_URL and TEST_REDIS_URL are all set (CI's mongo:7,
# NATS and redis:7 containers): then against those (and TEST_STRIPE_API_BASE).
TEST_INFRA = $(if $(and $(TEST_MONGO_URI),$(TEST_NATS_URL),$(TEST_REDIS_URL)),,$(DEV) infra --)

test: ## Build everything and run all tests against ephemeral infrastructure
	@$(MAKE) --no-print-directory -j2 bootstrap build-tests
	@$(MAKE) --no-print-directory check-deploy
	$(TEST_INFRA) $(CARGO) test --workspace
	$(FALLBACK)
	$(DEV) fleet --expiration-window 10 -- node --test --test-concurrency=1 tests/browser/*.test.mjs
	$(DEV) fleet --stripe-js --expiration-window 120 -- node --test --test-concurrency=1 tests/browser/stripe/*.test.mjs
	$(FUZZ)

# A test of the listing's price bounds again on SecantusDB's Python server, the fallback
# until the native one is built: the servers differ in how they bound an
# index scan (the Python one dropped the keys at a `$lte` bound), and the
# listing is where our queries lean on that most. A few seconds; not with
# CI's mongo:7 or a real mongod (bootstrap then installs no SecantusDB).
FALLBACK = $(if $(TEST_INFRA),if [ -x .dev/venv/bin/secantusd-py ]; then \
	TICKETING_MONGO_SERVER=python $(DEV) infra -- $(CARGO) test -p tickets --test api -- \
	windows::tickets_on_a_price_bound_or_a_window_end_are_listed; fi,)

# schemathesis against every API service's /openapi.json, through the ingress of
# a fleet of its own; about a minute (FUZZ_MAX_EXAMPLES per operation and phase,
# default 100). Reports in .dev/fuzz/.
FUZZ = $(DEV) fleet -- .dev/venv/bin/python tests/fuzz/run.py

fuzz: bootstrap ## Fuzz every API route through the ingress: no 5xx, every 4xx in the errors shape
	$(CARGO) build --workspace --bins
	$(FUZZ)

# The release fleet on ephemeral infrastructure, measured by tools/bench (the
# binaries it measures are the ones built next to it). The report is printed
# and saved to bench-results/report.md and .json; BENCH_* knobs in
# tools/bench/src/main.rs. The installs (network) and the release build (CPU)
# run side by side. The binary is run directly: `cargo run -p bench` would
# resolve features for bench alone and build half the dependencies again.
bench: ## Measure the release fleet: throughput, latency, propagation, expiry, races, memory, start-up
	@$(MAKE) --no-print-directory -j2 bootstrap release
	"$(CARGO_TARGET_DIR)/release/bench"

release: ## Build all binaries, optimised
	$(CARGO) build --release --workspace --bins

check-deploy: bootstrap ## Offline checks of infra/k8s, skaffold.yaml, Dockerfile.template and .github/
	$(CARGO) build --workspace --bins
	.dev/venv/bin/python infra/checks/check_deploy.py
	.dev/venv/bin/python -m unittest discover --start-directory infra/checks --pattern 'test_*.py'

build: ## Build all binaries
	$(CARGO) build --workspace --bins

build-tests: ## Build all binaries and tests
	$(CARGO) build --workspace --bins --tests

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Check formatting and clippy (warnings are errors; no unwrap/expect outside tests)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --lib --bins -- -D warnings -D clippy::unwrap_used -D clippy::expect_used

clean-dev: ## Delete local dev data (.dev/data: databases, streams); `rm -rf .dev` removes the tools too
	rm -rf .dev/data
