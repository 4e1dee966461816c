# The two commands of the README: `make devnet` and `make test`. Both set up the machine first.
# Builds go outside the clone so that CI and later runs reuse them.
CARGO_TARGET_DIR ?= $(HOME)/.cache/rtchain/target
export CARGO_TARGET_DIR

.PHONY: setup devnet test build fmt lint statetest

setup:
	bash scripts/setup.sh

# The devnet binary is built exactly as the tests build it (same targets, so the same feature
# set): right after `make test`, `make devnet` compiles nothing.
devnet: setup
	cargo build --workspace --bins --tests
	$(CARGO_TARGET_DIR)/debug/rtchain devnet $(ARGS)

test: setup
	bash scripts/test.sh

build:
	cargo build --workspace --bins --tests

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

statetest:
	cargo build --workspace --bins --tests
	$(CARGO_TARGET_DIR)/debug/rtchain statetest ../shared/ethereum-tests/GeneralStateTests
