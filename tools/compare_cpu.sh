#!/usr/bin/env bash
# The CPU comparison of BENCHMARKS.md in one run, every runtime at f32 and bf16 on the same shapes and threads:
# cliprt (its f32 engine, and each reduced-precision engine this CPU runs faster than f32: amx-bf16 or avx512-bf16
# for bf16, avx2-i16 for i16) against PyTorch (f32, bf16), ONNX Runtime (f32) and OpenVINO (f32, bf16). ViT-B/32 image at batch 1, 8, 32, the text
# tower on the 32 real short prompts, ViT-L/14 image at batch 8, SigLIP B/16 image at batch 32. Ends with tools/compare_table.py's summary.
#   tools/compare_cpu.sh [python] [threads] [out.jsonl]   (python: a venv with tools/requirements.txt)
# PEERS="torch ort openvino" limits the peers (default: all five modes; e.g. PyTorch bf16 is emulated, at a few
# images/s, on CPUs without AVX512_BF16).
# ROUNDS=N (default 3) repeats the whole comparison N times, cliprt and the peers alternating which goes first, and
# the summary keeps each runtime's best round: on a shared VM a neighbour can halve one runtime's speed for minutes
# (BENCHMARKS.md, Zen 3 sections), and one sequential pass hands that slow stretch to whoever ran in it. Every round's
# rows stay in the output, and the summary prints each workload's per-round ratio range beside the best-round ratio.
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
ROUNDS=${ROUNDS:-3}
# Quiet peers: their warnings go to stderr, their rows (JSON, tagged with the round) to $OUT.
tag() { sed -u "s/^{/{\"round\": $r, /" | tee -a "$OUT"; }
peer() { $PY tools/bench_torch.py --json --threads "$T" "$@" 2>/dev/null | tag; }
ours() { $B --threads "$T" bench --json "$@" | tag; }
# One workload: cliprt at each precision and the peers, in an order that alternates between rounds.
both() {
    local peer_args=$1; shift
    if (( r % 2 )); then
        for p in $PRECS; do ours "$@" --precision $p; done
        peer $peer_args
    else
        peer $peer_args
        for p in $PRECS; do ours "$@" --precision $p; done
    fi
}
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r of $ROUNDS: ViT-B/32 image, batch 1 8 32"
    both "--batch 1 8 32 --workload image --runtime $PEERS --reps 7" --workload image --batch 1,8,32 --reps 7
    echo "== round $r of $ROUNDS: ViT-B/32 text, batch 32 (real short prompts)"
    both "--batch 32 --workload text --runtime $PEERS --reps 7" --workload text --batch 32 --reps 7
    echo "== round $r of $ROUNDS: ViT-L/14 image, batch 8"
    both "--arch vit-l-14 --batch 8 --workload image --runtime $PEERS --reps 3" --arch vit-l-14 --workload image --batch 8 --reps 3
    echo "== round $r of $ROUNDS: SigLIP B/16 image, batch 32"
    both "--arch siglip-b-16 --batch 32 --workload image --runtime $PEERS --reps 3" --arch siglip-b-16 --workload image --batch 32 --reps 3
done
echo "== summary ($T threads)"
python3 tools/compare_table.py "$OUT"
