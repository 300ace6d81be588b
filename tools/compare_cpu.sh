#!/usr/bin/env bash
# The CPU comparison of BENCHMARKS.md in one run: cliprt (f32, bf16) against PyTorch and ONNX Runtime, same threads.
#   tools/compare_cpu.sh [python] [threads]     (python: a venv with tools/requirements.txt + onnxruntime)
set -euo pipefail
PY=${1:-tools/.venv/bin/python}
T=${2:-2}
B=target/release/cliprt
cargo build --release --quiet
echo "== cliprt f32"
$B --threads "$T" bench --workload image --batch 1,8,32 --reps 7
$B --threads "$T" bench --workload text --batch 32 --reps 7
echo "== cliprt bf16"
$B --threads "$T" bench --workload image --batch 1,8,32 --reps 7 --precision bf16
echo "== PyTorch + ONNX Runtime"
$PY tools/bench_torch.py --threads "$T" --batch 1 8 32 --workload image --runtime torch ort --reps 7 2>/dev/null
$PY tools/bench_torch.py --threads "$T" --batch 32 --workload text --reps 7 2>/dev/null
echo "== ViT-L/14 batch 8"
$B --threads "$T" bench --arch vit-l-14 --workload image --batch 8 --reps 3
$PY tools/bench_torch.py --arch vit-l-14 --threads "$T" --batch 8 --workload image --reps 3 2>/dev/null
