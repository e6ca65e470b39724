#!/usr/bin/env bash
# One command from a fresh Debian 12 machine: install dependencies, build Lancet (Release), and run
# the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target lancet
./build/lancet demo
