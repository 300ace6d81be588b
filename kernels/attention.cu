// attention.cu — fused multi-head self-attention: softmax(q·kᵀ / sqrt(head_dim) [+ causal mask]) · v in one
// kernel, never writing the seq × seq score matrix. Input is the fused-QKV GEMM's output, rows
// qkv[b·seq + t] = [q (heads·hd) | k (heads·hd) | v (heads·hd)]; output rows out[b·seq + t] = [heads·hd].
//
// Versions:
//   attention_f16_v1  one warp per query, 8 queries per block; keys and values stream through shared memory in
//                     tiles of 32 (converted to f32 once per block); online softmax in f32 (running max and sum,
//                     rescaled per tile); lane j scores key j, then every lane accumulates its head dimensions
//                     (lane, lane+32, …) over the tile. Any head_dim ≤ 128 (64, 80, 104 in CLIP), any seq.
//                     CUDA cores, not tensor cores. Not yet measured on a GPU.

#define A1_QUERIES 8
#define A1_KEYS 32
#define A1_MAX_HD 128
// K rows padded to an odd stride: lane j reading key j's element d hits bank (j·129 + d) mod 32, all different.
#define A1_KSTRIDE (A1_MAX_HD + 1)

// Grid: (ceil(seq / 8), heads, batch); block: 256 threads (8 warps).
extern "C" __global__ void __launch_bounds__(256) attention_f16_v1(half_t* __restrict__ out,
                                                                   const half_t* __restrict__ qkv, int seq,
                                                                   int heads, int hd, int causal, float scale) {
    __shared__ float sk[A1_KEYS * A1_KSTRIDE];
    __shared__ float sv[A1_KEYS * A1_MAX_HD];
    __shared__ float sq[A1_QUERIES * A1_MAX_HD];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * A1_QUERIES, q = q0 + warp;
    const int width = heads * hd;
    const size_t row_stride = 3 * (size_t)width;
    const half_t* base = qkv + (size_t)b * seq * row_stride + h * hd;

    // The softmax scale is folded into q (as HF does), so scores come out scaled.
    const bool active = q < seq;
    for (int d = lane; d < hd; d += WARP_SIZE) {
        sq[warp * A1_MAX_HD + d] = active ? h2f(base[(size_t)q * row_stride + d]) * scale : 0.0f;
    }

    // The last key any query of this block may see.
    const int kv_end = causal ? min(seq, q0 + A1_QUERIES) : seq;
    float m = NEG_INF, l = 0.0f, o[A1_MAX_HD / WARP_SIZE];
    for (int i = 0; i < A1_MAX_HD / WARP_SIZE; i++) o[i] = 0.0f;

    for (int k0 = 0; k0 < kv_end; k0 += A1_KEYS) {
        __syncthreads();  // the previous tile is consumed (and sq is written, on the first pass)
        for (int idx = threadIdx.x; idx < A1_KEYS * hd; idx += blockDim.x) {
            const int j = idx / hd, d = idx - j * hd, key = k0 + j;
            const bool in = key < seq;
            const half_t* r = base + (size_t)key * row_stride;
            sk[j * A1_KSTRIDE + d] = in ? h2f(r[width + d]) : 0.0f;
            sv[j * A1_MAX_HD + d] = in ? h2f(r[2 * width + d]) : 0.0f;
        }
        __syncthreads();
        if (!active) continue;  // warp-uniform; no barrier below

        const int key = k0 + lane;
        float s = NEG_INF;
        if (key < seq && (!causal || key <= q)) {
            s = 0.0f;
            for (int d = 0; d < hd; d++) s += sq[warp * A1_MAX_HD + d] * sk[lane * A1_KSTRIDE + d];
        }
        const float m_new = fmaxf(m, warp_max(s));
        if (m_new == NEG_INF) continue;  // every key of this tile is masked for this query
        const float p = s == NEG_INF ? 0.0f : expf(s - m_new);
        const float alpha = expf(m - m_new);  // 0 on the first live tile (m = −inf)
        l = l * alpha + warp_sum(p);
        for (int i = 0; i < A1_MAX_HD / WARP_SIZE; i++) o[i] *= alpha;
        for (int j = 0; j < A1_KEYS; j++) {
            const float pj = __shfl_sync(FULL_MASK, p, j);
            for (int i = 0; i < A1_MAX_HD / WARP_SIZE; i++) {
                const int d = lane + i * WARP_SIZE;
                if (d < hd) o[i] += pj * sv[j * A1_MAX_HD + d];
            }
        }
        m = m_new;
    }

    if (!active) return;
    // l ≥ 1 here: the row's maximum key contributes exp(0).
    const float inv = 1.0f / l;
    half_t* dst = out + ((size_t)b * seq + q) * width + h * hd;
    for (int i = 0; i < A1_MAX_HD / WARP_SIZE; i++) {
        const int d = lane + i * WARP_SIZE;
        if (d < hd) dst[d] = f2h(o[i] * inv);
    }
}
