#!/usr/bin/env bash
# The CPU comparison of BENCHMARKS.md in one run, every runtime at f32 and bf16 on the same shapes and threads:
# cliprt (its f32 engine, and each reduced-precision engine this CPU runs faster than f32: amx-bf16 or avx512-bf16
# for bf16, avx2-i16 for i16) against PyTorch (f32, bf16), ONNX Runtime (f32) and OpenVINO (f32, bf16). ViT-B/32 image at batch 1, 8, 32, the text
# tower on the 32 real short prompts, ViT-L/14 image at batch 8, SigLIP B/16 image at batch 32. Ends with tools/compare_table.py's summary.
#   tools/compare_cpu.sh [python] [threads] [out.jsonl]   (python: a venv with tools/requirements.txt)
# PEERS="torch ort openvino" limits the peers (default: all five modes; e.g. PyTorch bf16 is emulated, at a few
# images/s, on CPUs without AVX512_BF16).
set -euo pipefail
PY=${1:-tools/.venv/bin/python}
T=${2:-2}
OUT=${3:-target/compare_cpu.jsonl}
B=target/release/cliprt
PEERS=${PEERS:-"torch torch-bf16 ort openvino openvino-bf16"}
cargo build --release --quiet
# f32, and each reduced precision whose engine here is not the f32 engine (where it falls back, its rows would
# repeat f32's).
info=$($B info)
engine_of() { sed -n "s/^$1 engine: *\([^ ]*\).*/\1/p" <<< "$info"; }
PRECS=f32
for p in bf16 i16; do
    if [ "$(engine_of $p)" != "$(engine_of f32)" ]; then PRECS="$PRECS $p"; fi
done
: > "$OUT"
echo "== machine"
grep -m1 "model name" /proc/cpuinfo || true
grep -E "^(cpu|amx|f32 engine|bf16 engine|i16 engine)" <<< "$info"
# Quiet peers: their warnings go to stderr, their rows (JSON) to $OUT.
peer() { $PY tools/bench_torch.py --json --threads "$T" "$@" 2>/dev/null | tee -a "$OUT"; }
ours() { $B --threads "$T" bench --json "$@" | tee -a "$OUT"; }
echo "== ViT-B/32 image, batch 1 8 32"
for p in $PRECS; do ours --workload image --batch 1,8,32 --reps 7 --precision $p; done
peer --batch 1 8 32 --workload image --runtime $PEERS --reps 7
echo "== ViT-B/32 text, batch 32 (real short prompts)"
for p in $PRECS; do ours --workload text --batch 32 --reps 7 --precision $p; done
peer --batch 32 --workload text --runtime $PEERS --reps 7
echo "== ViT-L/14 image, batch 8"
for p in $PRECS; do ours --arch vit-l-14 --workload image --batch 8 --reps 3 --precision $p; done
peer --arch vit-l-14 --batch 8 --workload image --runtime $PEERS --reps 3
echo "== SigLIP B/16 image, batch 32"
for p in $PRECS; do ours --arch siglip-b-16 --workload image --batch 32 --reps 3 --precision $p; done
peer --arch siglip-b-16 --batch 32 --workload image --runtime $PEERS --reps 3
echo "== summary ($T threads)"
python3 tools/compare_table.py "$OUT"
