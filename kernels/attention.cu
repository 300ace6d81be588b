// attention.cu — fused multi-head self-attention: softmax(q·kᵀ / sqrt(head_dim) [+ causal mask]) · v in one
// kernel, never writing the seq × seq score matrix. An optional key_lens[batch] (null: none) is a key padding mask:
// item b's queries see only its first key_lens[b] keys (1..seq, checked by the host). Input is the fused-QKV GEMM's output, rows
// qkv[b·seq + t] = [q (heads·hd) | k (heads·hd) | v (heads·hd)]; output rows out[b·seq + t] = [heads·hd].
//
// Versions:
//   attention_f16_v1  one warp per query, 8 queries per block; keys and values stream through shared memory in
//                     tiles of 32 (converted to f32 once per block); online softmax in f32 (running max and sum,
//                     rescaled per tile); lane j scores key j, then every lane accumulates its head dimensions
//                     (lane, lane+32, …) over the tile. Any head_dim ≤ 128 (64, 80, 104 in CLIP), any seq.
//                     CUDA cores, not tensor cores. Not yet measured on a GPU.
//   attention_f16_v2  tensor cores, FlashAttention-2 style: a block of 4 warps owns 64 queries of one (batch,
//                     head), each warp 16 of them; keys and values stream through shared memory in blocks of 32.
//                     S = Q·Kᵀ on mma.sync m16n8k16 (head dims padded to a multiple of 16: 104 -> 112), online
//                     softmax in f32 on the accumulators, P re-packed as the A operand of P·V (V read with
//                     ldmatrix.trans). Causal blocks past the tile's last query are skipped. Head dim <= 128.
//                     Not yet measured or run on a GPU: validated on the simulator (tests/cuda.rs).
//   attention_f16_v3  v2's math with K and V resident: one CTA per (batch, head, 64-query tile) loads Q and every K
//                     and V row it can see into dynamic shared memory by cp.async at once, then its warps run over
//                     the key blocks with no barrier (causal: each warp stops at its own last query). For CLIP's
//                     short sequences: (64 + 2·seq)·(hd + 8)·2 bytes must fit the device's opt-in shared memory
//                     (ViT-L/14's 257 tokens at hd 64: 84 KB); the host runs v2 otherwise. Not yet measured.

#define A1_KEYS 32
// K rows padded to an odd stride: lane j reading key j's element d hits bank (j·129 + d) mod 32, all different.
#define A1_KSTRIDE (A1_MAX_HD + 1)

// Grid: (ceil(seq / 8), heads, batch); block: 256 threads (8 warps).
extern "C" __global__ void __launch_bounds__(256) attention_f16_v1(half_t* __restrict__ out,
                                                                   const half_t* __restrict__ qkv,
                                                                   const int* __restrict__ key_lens, int seq,
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

    // The keys of this batch item, and the last key any query of this block may see.
    const int nkeys = key_lens ? min(seq, key_lens[b]) : seq;
    const int kv_end = causal ? min(nkeys, q0 + A1_QUERIES) : nkeys;
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
        if (key < nkeys && (!causal || key <= q)) {
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

#define A2_KB 32
#define A2_MAXD 128

// One warp's running state over the key blocks: the output accumulators of its 16 queries (rows qa = q0 + 16·warp
// + g and qb = qa + 8 of the mma fragments) and the online-softmax max and sum of those two rows.
template <int D>
struct A2State {
    float o[D / 8][4];
    float m[2], l[2];
};

template <int D>
__device__ __forceinline__ void a2_init(A2State<D>& st) {
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) st.o[j][e] = 0.0f;
    st.m[0] = st.m[1] = NEG_INF;
    st.l[0] = st.l[1] = 0.0f;
}

// Keys k0 .. k0 + 31 for one warp: K rows sk[0..31] and V rows sv[0..31] (row stride lds halves, zero rows past
// the sequence), the warp's 16 Q rows at sq (row stride lds). S = Q·Kᵀ on mma.sync, scale and mask, online softmax
// in f32 on the accumulators, then O += P·V with P re-packed as A fragments and V read by ldmatrix.trans.
// The mask is one key limit per accumulator row: row qa sees keys below lim_a, row qb below lim_b (a2_limit folds
// the causal mask and the key padding mask into it, so the key loop holds two integers, not four).
template <int D>
__device__ __forceinline__ void a2_key_block(A2State<D>& st, const half_t* sq, const half_t* sk, const half_t* sv,
                                             int lds, int k0, int lim_a, int lim_b, float scale, int lane) {
    const int t4 = lane & 3;
    // S = Q_w · K_blockᵀ: 16 queries × 32 keys, 4 n8 tiles.
    float s[4][4];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
        unsigned a[4];
        ldmatrix_x4(a, sq + (lane & 15) * lds + kk + (lane >> 4) * 8);
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
            unsigned t[4];
            ldmatrix_x4(t, sk + (j * 8 + (lane & 7) + ((lane >> 4) << 3)) * lds + kk + ((lane >> 3) & 1) * 8);
            const unsigned b0[2] = {t[0], t[1]}, b1[2] = {t[2], t[3]};
            mma_m16n8k16(s[j], a, b0);
            mma_m16n8k16(s[j + 1], a, b1);
        }
    }

    // Scale and mask; accumulator e is row (e < 2 ? qa : qb), key k0 + 8j + 2·t4 + (e & 1).
    float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = k0 + j * 8 + t4 * 2 + (e & 1);
            const bool live = key < (e < 2 ? lim_a : lim_b);
            s[j][e] = live ? s[j][e] * scale : NEG_INF;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
        }
    // A row's 32 scores live in the 4 threads of a quad.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
    }
    float alpha[2], rowsum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float m_new = fmaxf(st.m[r], mx[r]);
        // A row with nothing live yet keeps m = −∞ and contributes zeros.
        alpha[r] = m_new == NEG_INF ? 1.0f : expf(st.m[r] - m_new);
        st.m[r] = m_new;
    }
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = e >> 1;
            const float p = s[j][e] == NEG_INF ? 0.0f : expf(s[j][e] - st.m[r]);
            s[j][e] = p;
            rowsum[r] += p;
        }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        rowsum[r] += __shfl_xor_sync(FULL_MASK, rowsum[r], 1);
        rowsum[r] += __shfl_xor_sync(FULL_MASK, rowsum[r], 2);
        st.l[r] = st.l[r] * alpha[r] + rowsum[r];
    }
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
        st.o[j][0] *= alpha[0];
        st.o[j][1] *= alpha[0];
        st.o[j][2] *= alpha[1];
        st.o[j][3] *= alpha[1];
    }

    // O += P · V_block: P's accumulators are exactly the A fragments of two k16 steps (keys 0-15, 16-31).
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        const unsigned a[4] = {pack_f16x2(s[2 * ks][0], s[2 * ks][1]), pack_f16x2(s[2 * ks][2], s[2 * ks][3]),
                               pack_f16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                               pack_f16x2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
        for (int n0 = 0; n0 < D; n0 += 16) {
            // Matrices (keys 0-7, d n0..), (keys 8-15, d n0..), (keys 0-7, d n0+8..), (keys 8-15, d n0+8..),
            // transposed on load: b0, b1 of d tiles n0 and n0 + 8.
            unsigned t[4];
            ldmatrix_x4_trans(t, sv + (ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * lds + n0 + (lane >> 4) * 8);
            const unsigned b0[2] = {t[0], t[1]}, b1[2] = {t[2], t[3]};
            mma_m16n8k16(st.o[n0 / 8], a, b0);
            mma_m16n8k16(st.o[n0 / 8 + 1], a, b1);
        }
    }
}

// The warp's normalized outputs: rows qa, qb of head h, dims below hd.
template <int D>
__device__ __forceinline__ void a2_store(const A2State<D>& st, half_t* __restrict__ out, int b, int h, int seq,
                                         int width, int hd, int qa, int qb, int lane) {
    const int t4 = lane & 3;
    // l > 0 for every real query row (its own key, or key 0, is live).
    const float inv[2] = {st.l[0] > 0.0f ? 1.0f / st.l[0] : 0.0f, st.l[1] > 0.0f ? 1.0f / st.l[1] : 0.0f};
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int q = e < 2 ? qa : qb, d = j * 8 + t4 * 2 + (e & 1);
            if (q < seq && d < hd) out[((size_t)b * seq + q) * width + h * hd + d] = f2h(st.o[j][e] * inv[e >> 1]);
        }
}

// Rows [row0, row0 + rows) of one head's q, k or v (part 0, 1, 2) into a shared tile of row stride lds, zero past
// the sequence and past hd; 16-byte copies, by cp.async when `async` (collected by the caller's wait), else
// through registers.
template <int D>
__device__ __forceinline__ void a2_load_rows(half_t* tile, int lds, const half_t* __restrict__ base, size_t row_stride,
                                             int part, int width, int row0, int rows, int seq, int hd, bool async) {
    for (int c = threadIdx.x; c < rows * (D / 8); c += blockDim.x) {
        const int r = c / (D / 8), d = (c % (D / 8)) * 8, t = row0 + r;
        const bool in = t < seq && d < hd;
        const half_t* src = base + (size_t)t * row_stride + part * width + d;
        half_t* dst = tile + r * lds + d;
        if (async) {
            cp_async_16(dst, in ? src : base, in ? 16 : 0);
        } else {
            *(uint4*)dst = in ? *(const uint4*)src : make_uint4(0, 0, 0, 0);
        }
    }
}

#define A2_LDS (A2_MAXD + 8)

// The keys query row q sees: the first nkeys, and under the causal mask none past itself.
__device__ __forceinline__ int a2_limit(int q, int nkeys, int causal) { return causal ? min(nkeys, q + 1) : nkeys; }

// attention_f16_v2's (batch, head, 64-query tile) for a padded head dim D (a multiple of 16): K and V stream
// through shared memory in blocks of 32.
template <int D>
__device__ __forceinline__ void attention_v2_tile(half_t* __restrict__ out, const half_t* __restrict__ qkv,
                                                  half_t* sq, half_t* sk, half_t* sv, int seq, int nkeys,
                                                  int heads, int hd, int causal, float scale) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * A2_Q;
    const int width = heads * hd;
    const size_t row_stride = 3 * (size_t)width;
    const half_t* base = qkv + (size_t)b * seq * row_stride + h * hd;
    a2_load_rows<D>(sq, A2_LDS, base, row_stride, 0, width, q0, A2_Q, seq, hd, false);

    A2State<D> st;
    a2_init(st);
    const int qa = q0 + warp * 16 + (lane >> 2), qb = qa + 8;
    const int lim_a = a2_limit(qa, nkeys, causal), lim_b = a2_limit(qb, nkeys, causal);
    const int kv_end = causal ? min(nkeys, q0 + A2_Q) : nkeys;
    for (int k0 = 0; k0 < kv_end; k0 += A2_KB) {
        __syncthreads();  // the previous block's K and V are consumed (and Q is stored, on the first pass)
        // Keys past nkeys are masked: loading them as zeros keeps `seq` out of the loop (register pressure).
        a2_load_rows<D>(sk, A2_LDS, base, row_stride, 1, width, k0, A2_KB, nkeys, hd, false);
        a2_load_rows<D>(sv, A2_LDS, base, row_stride, 2, width, k0, A2_KB, nkeys, hd, false);
        __syncthreads();
        a2_key_block<D>(st, sq + warp * 16 * A2_LDS, sk, sv, A2_LDS, k0, lim_a, lim_b, scale, lane);
    }
    a2_store<D>(st, out, b, h, seq, width, hd, qa, qb, lane);
}

// Grid: (ceil(seq / 64), heads, batch); block: 128 threads (4 warps). head_dim % 8 == 0 and <= 128 (the host
// checks and runs v1 otherwise).
extern "C" __global__ void __launch_bounds__(128) attention_f16_v2(half_t* __restrict__ out,
                                                                   const half_t* __restrict__ qkv,
                                                                   const int* __restrict__ key_lens, int seq,
                                                                   int heads, int hd, int causal, float scale) {
    __shared__ __align__(16) half_t sq[A2_Q * A2_LDS];
    __shared__ __align__(16) half_t sk[A2_KB * A2_LDS];
    __shared__ __align__(16) half_t sv[A2_KB * A2_LDS];
    const int nkeys = key_lens ? min(seq, key_lens[blockIdx.z]) : seq;
    if (hd <= 64) attention_v2_tile<64>(out, qkv, sq, sk, sv, seq, nkeys, heads, hd, causal, scale);
    else if (hd <= 80) attention_v2_tile<80>(out, qkv, sq, sk, sv, seq, nkeys, heads, hd, causal, scale);
    else if (hd <= 112) attention_v2_tile<112>(out, qkv, sq, sk, sv, seq, nkeys, heads, hd, causal, scale);
    else attention_v2_tile<128>(out, qkv, sq, sk, sv, seq, nkeys, heads, hd, causal, scale);
}

// attention_f16_v3's tile: Q, and every K and V row the tile can see, land in dynamic shared memory by cp.async in
// one go (row stride D + 8); then each warp runs over the key blocks with no barrier.
template <int D>
__device__ __forceinline__ void attention_v3_tile(half_t* __restrict__ out, const half_t* __restrict__ qkv,
                                                  half_t* smem, int seq, int nkeys, int heads, int hd, int causal,
                                                  float scale) {
    constexpr int LDS = D + 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * A2_Q;
    const int width = heads * hd;
    const size_t row_stride = 3 * (size_t)width;
    const half_t* base = qkv + (size_t)b * seq * row_stride + h * hd;
    const int kv_end = causal ? min(nkeys, q0 + A2_Q) : nkeys;
    const int kv_rows = (kv_end + A2_KB - 1) / A2_KB * A2_KB;
    // Layout (the host sizes it for the whole sequence): Q [64][LDS], K [seq32][LDS], V [seq32][LDS].
    const int seq32 = (seq + A2_KB - 1) / A2_KB * A2_KB;
    half_t* sq = smem;
    half_t* sk = sq + A2_Q * LDS;
    half_t* sv = sk + seq32 * LDS;
    a2_load_rows<D>(sq, LDS, base, row_stride, 0, width, q0, A2_Q, seq, hd, true);
    a2_load_rows<D>(sk, LDS, base, row_stride, 1, width, 0, kv_rows, seq, hd, true);
    a2_load_rows<D>(sv, LDS, base, row_stride, 2, width, 0, kv_rows, seq, hd, true);
    cp_async_wait_all();
    __syncthreads();

    A2State<D> st;
    a2_init(st);
    const int qa = q0 + warp * 16 + (lane >> 2), qb = qa + 8;
    const int lim_a = a2_limit(qa, nkeys, causal), lim_b = a2_limit(qb, nkeys, causal);
    // Causal: the warp's own last query bounds its keys (other warps' keys are not needed by this one).
    const int warp_end = causal ? min(kv_end, q0 + warp * 16 + 16) : kv_end;
    for (int k0 = 0; k0 < warp_end; k0 += A2_KB) {
        a2_key_block<D>(st, sq + warp * 16 * LDS, sk + k0 * LDS, sv + k0 * LDS, LDS, k0, lim_a, lim_b, scale, lane);
    }
    a2_store<D>(st, out, b, h, seq, width, hd, qa, qb, lane);
}

// Grid: (ceil(seq / 64), heads, batch); block: 128 threads; dynamic shared memory (64 + 2·ceil32(seq))·(D + 8)·2
// bytes for the padded head dim D (src/cuda/kernels.rs: attention_v3_smem). head_dim % 8 == 0 and <= 128.
extern "C" __global__ void __launch_bounds__(128) attention_f16_v3(half_t* __restrict__ out,
                                                                   const half_t* __restrict__ qkv,
                                                                   const int* __restrict__ key_lens, int seq,
                                                                   int heads, int hd, int causal, float scale) {
    extern __shared__ __align__(16) half_t smem[];
    const int nkeys = key_lens ? min(seq, key_lens[blockIdx.z]) : seq;
    if (hd <= 64) attention_v3_tile<64>(out, qkv, smem, seq, nkeys, heads, hd, causal, scale);
    else if (hd <= 80) attention_v3_tile<80>(out, qkv, smem, seq, nkeys, heads, hd, causal, scale);
    else if (hd <= 112) attention_v3_tile<112>(out, qkv, smem, seq, nkeys, heads, hd, causal, scale);
    else attention_v3_tile<128>(out, qkv, smem, seq, nkeys, heads, hd, causal, scale);
}
