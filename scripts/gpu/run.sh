#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu/prepare.sh built .gpu/ here and it was carried there:
#
#   scripts/gpu/run.sh RESULTS_DIR
#
# 1. the environment (GPU, driver, NVRTC found), 2. `cliprt info --device cuda`, 3. the kernel check for the
# device's arch, 4. the CUDA tests (a missing GPU is a failure here, not a skip), 4b. `cliprt profile` (every
# kernel variant validated, then timed, cuBLAS alongside) on ViT-B/32's shapes, 5. `cliprt bench --device cuda`
# for ViT-B/32 (batch 1, 32, 256, 1024) and ViT-L/14 (1, 32, 256), 6. PyTorch fp16 + SDPA on the same shapes,
# 6b. ViT-B/32 batch 1 with CUDA graphs off (the latency they save), 6c. ViT-B/32 with the opt-in gemm and
# attention variants v2 and v3, 7. the fused top-k search on the GPU (1M × 512 gallery; the CPU side is measured on
# the dev box), 8. the comparison tables. Every step has its
# own time limit, and the limits add up to 6 minutes; logs go to RESULTS_DIR.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: scripts/gpu/run.sh RESULTS_DIR}
mkdir -p "$out"
failed=()
step() { # step NAME SECONDS CMD...: runs CMD with a time limit, tees its output to RESULTS_DIR/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc in $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

# NVRTC: CLIPRT_NVRTC if set, else the CUDA toolkit's, else a pip wheel's (nvidia-cuda-nvrtc) next to PyTorch.
if [ -z "${CLIPRT_NVRTC:-}" ]; then
    sp=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
    for f in /usr/local/cuda/lib64/libnvrtc.so.* /usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so.* \
             $(for d in $sp; do echo "$d"/nvidia/*/lib/libnvrtc.so.*; done); do
        case $f in *builtins*|*alt*) continue ;; esac
        [ -f "$f" ] && { export CLIPRT_NVRTC=$f; break; }
    done
fi
[ -n "${CLIPRT_NVRTC:-}" ] && export LD_LIBRARY_PATH="$(dirname "$CLIPRT_NVRTC")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The toolkit's libcublas.so, for the cuBLAS reference rows of `cliprt profile` (cudarc looks for libcublas.so).
[ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/usr/local/cuda/lib64"
export CLIPRT_CACHE_DIR="$out/cache" CLIPRT_FIXTURES="$PWD/tests/fixtures"

{
    echo "commit built: $(cat .gpu/commit 2>/dev/null)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    echo "CLIPRT_NVRTC=${CLIPRT_NVRTC:-unset}"
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1
} | tee "$out/env.log"

step info 15 .gpu/cliprt info --device cuda
arch=$(sed -n 's/.*compute \([0-9]*\)\.\([0-9]*\).*/sm_\1\2/p' "$out/info.log" | head -1)
step kernels 15 .gpu/cliprt kernels --check --arch "${arch:-sm_90},sm_80"
# The simulator checks of the same tests ran in CI; here they would only spend device time (CLIPRT_SIM=0).
step tests 90 env CLIPRT_REQUIRE_CUDA=1 CLIPRT_REQUIRE_NVRTC=1 CLIPRT_SIM=0 .gpu/cuda-tests --test-threads=1 --nocapture
step profile 30 .gpu/cliprt profile --op all --arch vit-b-32 --batch 32,256 --reps 20
# Limits: 35 s per step for ViT-B/32 (which also runs batch 1024), 40 s for ViT-L/14, 10 s for batch-1 latency
# without CUDA graphs (the sum of every limit is 360 s).
for a in vit-b-32 vit-l-14; do
    limit=$([ "$a" = vit-b-32 ] && echo 35 || echo 40)
    batches=$([ "$a" = vit-b-32 ] && echo 1,32,256,1024 || echo 1,32,256)
    step "bench-$a" "$limit" .gpu/cliprt bench --device cuda --arch "$a" --batch "$batches" --workload image,text \
        --warmup 2 --reps 10 --json
    step "torch-$a" "$limit" python3 tools/bench_torch.py --device cuda --dtype fp16 --arch "$a" \
        --batch ${batches//,/ } --warmup 2 --reps 10 --json
done
step eager-b1 10 env CLIPRT_CUDA_GRAPHS=0 .gpu/cliprt bench --device cuda --arch vit-b-32 --batch 1 \
    --workload image --warmup 2 --reps 20
# The image tower end to end with the opt-in variants (the bench steps above run the defaults).
step variant-v2 15 env CLIPRT_KERNEL_GEMM=v2 CLIPRT_KERNEL_ATTENTION=v2 .gpu/cliprt bench --device cuda \
    --arch vit-b-32 --batch 1,256,1024 --workload image --warmup 2 --reps 10
step variant-v3 10 env CLIPRT_KERNEL_GEMM=v3 CLIPRT_KERNEL_ATTENTION=v3 .gpu/cliprt bench --device cuda \
    --arch vit-b-32 --batch 1,256 --workload image --warmup 2 --reps 10
step search-cuda 25 .gpu/cliprt bench --device cuda --workload search --gallery 1000000 --dim 512 \
    --queries 1,64,1024 --k 10,100 --reps 5 --json
{
    grep -v '^==' "$out/profile.log"
    echo
    cat "$out"/bench-*.log "$out"/torch-*.log | python3 scripts/gpu/compare.py
    echo
    echo "ViT-B/32 batch 1 without CUDA graphs:"
    grep -v '^==' "$out/eager-b1.log"
    echo
    for v in v2 v3; do echo "ViT-B/32 image tower with gemm $v, attention $v:"; grep -v '^==' "$out/variant-$v.log"; done
    echo
    cat "$out"/search-*.log | python3 tools/compare_search.py
} | tee "$out/summary.txt"

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" | tee -a "$out/summary.txt"
    exit 1
fi
echo "all steps passed" | tee -a "$out/summary.txt"
