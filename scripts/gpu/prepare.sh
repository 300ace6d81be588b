#!/usr/bin/env bash
# Here (no GPU needed): builds what scripts/gpu/run.sh needs on the GPU machine, which has no Rust toolchain.
# The release binary and the CUDA test binary, stripped, go into .gpu/ (git-ignored): carry it.
#
#   scripts/gpu/prepare.sh && <device run, carry .gpu>: scripts/gpu/run.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release
test_bin=$(cargo test --release --no-run --test cuda 2>&1 | grep -o 'target/release/deps/cuda-[0-9a-f]*' | tail -1)
[ -x "$test_bin" ] || { echo "prepare: no CUDA test binary found" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu
cp target/release/cliprt .gpu/cliprt
cp "$test_bin" .gpu/cuda-tests
# Line tables are not needed there; stripping keeps the carried tree well under its 64 MiB.
strip .gpu/cliprt .gpu/cuda-tests 2>/dev/null || true
git rev-parse HEAD > .gpu/commit
du -sh .gpu/*
