#!/usr/bin/env bash
# The whole test suite: formatting, lints, contract artifacts, unit and integration tests
# (nextest, one process per test), and the Cancun+ state tests.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/rtchain/target}
profile=${RTCHAIN_TEST_PROFILE:-ci}

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "contracts: committed artifacts match a fresh solc compile"
node scripts/compile-contracts.mjs --check

step "build"
cargo build --workspace --bins --tests

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (nextest profile $profile)"
cargo nextest run --workspace --profile "$profile" --no-fail-fast

step "ethereum/tests GeneralStateTests (Cancun and later)"
tests_dir=${RTCHAIN_STATE_TESTS:-$root/../shared/ethereum-tests/GeneralStateTests}
"$CARGO_TARGET_DIR/debug/rtchain" statetest "$tests_dir"

step "ethereum/tests GeneralStateTests through the node's parallel path"
"$CARGO_TARGET_DIR/debug/rtchain" statetest --parallel "$tests_dir"
