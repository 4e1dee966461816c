#!/usr/bin/env bash
# Installs everything rtchain needs on a fresh Debian 12 machine, skipping what is already there.
# System packages come from apt, JavaScript tools from npm and Python clients from pip, all pinned.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

apt_packages=(libclang-dev clang pkg-config libdpdk-dev dpdk dpdk-dev libhwloc-dev libudev-dev libnuma-dev ethtool iproute2)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "${RTCHAIN_SETUP_RUST_ONLY:-0}" == 1 ]]; then exit 0; fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# npm tools (anvil, cast, solc, viem) pinned in package-lock.json.
if [[ ! -x "$root/node_modules/.bin/anvil" || "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]]; then
  (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Python clients in a project venv, pinned in requirements.txt.
venv="$root/.venv"
if [[ ! -x "$venv/bin/python" ]]; then python3 -m venv "$venv"; fi
stamp="$venv/.requirements.stamp"
if [[ ! -f "$stamp" ]] || ! cmp -s "$root/tests/python/requirements.txt" "$stamp"; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/tests/python/requirements.txt"
  cp "$root/tests/python/requirements.txt" "$stamp"
fi
