#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need when missing, then runs
# formatting, lints and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v prlimit >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
