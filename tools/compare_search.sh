#!/usr/bin/env bash
# The search comparison of BENCHMARKS.md in one go: cliprt (f32 and bf16 galleries) against faiss-cpu IndexFlatIP
# and numpy on the same sizes and thread count, then one table (tools/compare_search.py).
#   tools/compare_search.sh [PYTHON] [THREADS]      e.g. tools/compare_search.sh tools/.venv/bin/python 2
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
threads=${2:-2}
cargo build --release --quiet
bin=target/release/cliprt
log=$(mktemp)
run() { # run GALLERY DIMS QUERIES KS REPS: every side on one grid
    local g=$1 d=$2 q=$3 k=$4 reps=$5
    for prec in f32 bf16; do
        $bin --threads "$threads" bench --workload search --gallery "$g" --dim "$d" --queries "$q" --k "$k" \
            --precision "$prec" --reps "$reps" --json | tee -a "$log"
    done
    "$py" tools/bench_faiss.py --threads "$threads" --gallery ${g//,/ } --dim ${d//,/ } --queries ${q//,/ } \
        --k ${k//,/ } --reps "$reps" --json | tee -a "$log"
}
run 100000,1000000 512,768 1,64 10,100,1000 3
run 100000 512,768 1024 10,100,1000 3
# The acceptance point last, with more repetitions (its rows replace the grid's in the table).
run 1000000 512 64 10 5
"$py" tools/compare_search.py < "$log"
