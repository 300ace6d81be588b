// common.cuh — prepended by cliprt to every kernels/*.cu before NVRTC compiles it (src/cuda/kernels.rs).
//
// Self-contained on purpose: no CUDA toolkit header is included anywhere, so NVRTC needs no include path on any
// machine (a PyPI NVRTC wheel ships none). fp16 conversion, mma.sync, ldmatrix and cp.async are inline PTX.
// Storage type for fp16 is the raw 16-bit pattern (`half_t`); all arithmetic happens in f32.

typedef unsigned short half_t;

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu
// −∞ without <math.h> (NVRTC has no INFINITY macro without toolkit headers).
#define NEG_INF __int_as_float(0xff800000)

// The epilogue codes (EPI_STORE, EPI_ACCUMULATE, EPI_QUICK_GELU, EPI_GELU, EPI_GELU_TANH), the tile geometry the host launches
// with and the kernels' limits are #defines generated ahead of this file from src/cuda/kernels.rs (SHARED): one
// definition for the host and the kernels.

// The hardware primitives, as inline PTX. Under CLIPRT_SIM (the CPU simulator, src/cuda/sim/runtime.hpp) the
// simulator defines them instead, with the same semantics; everything below the block is shared.
#ifndef CLIPRT_SIM
__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, like every other f32 -> f16 conversion in cliprt (half::f16::from_f32 on the host).
__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// A generic pointer to shared memory as the 32-bit shared-window address that ldmatrix and cp.async take.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Four 8×8 b16 matrices from shared memory. Lanes 8i..8i+7 give the row addresses of matrix i; register i of
// every lane receives row lane/4, columns 2·(lane%4) and +1 of matrix i (the mma.sync fragment layout).
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const half_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// d = a·b + d on tensor cores: a is 16×16 f16 (row-major fragment), b is 16×8 f16 (column-major), d is 16×8 f32.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Copies 16 bytes global -> shared without passing through registers; bytes past `src_bytes` are zero-filled
// (src_bytes = 0 reads nothing and stores zeros: how tiles past the matrix edge are padded).
__device__ __forceinline__ void cp_async_16(half_t* dst, const half_t* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

// Waits for every cp.async this thread issued (commit + wait_group 0).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Closes the group of cp.async copies issued so far (for multi-stage pipelines).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ldmatrix with transpose: lanes 8i..8i+7 address the rows of matrix i, each lane receives the transposed fragment
// (the B operand of mma.sync from a row-major [k][n] tile).
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const half_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

#endif  // CLIPRT_SIM

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// The tower activations, in f32. quick_gelu = x·σ(1.702x) written as x / (1 + e^(−1.702x)), finite for any x;
// gelu is the exact erf form (HF "gelu"), not the tanh approximation.
__device__ __forceinline__ float quick_gelu(float x) { return x / (1.0f + expf(-1.702f * x)); }
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
// GELU's tanh approximation (HF gelu_pytorch_tanh) as x·σ(2u), u = √(2/π)(x + 0.044715x³): finite for any x.
__device__ __forceinline__ float gelu_tanh(float x) {
    const float u = 0.7978846f * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

// Two f32 values as one f16x2 register (lo in the low half), round to nearest even.
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
    return (unsigned)f2h(lo) | ((unsigned)f2h(hi) << 16);
}
