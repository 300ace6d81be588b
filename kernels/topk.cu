// topk.cu — fused retrieval: the k best gallery rows of each query by scaled cosine, without ever writing the
// queries × gallery score matrix. Queries arrive normalized and multiplied by the scale (host side, once);
// gallery rows are f32, with optional precomputed inverse norms (null for a normalized gallery).
//
// Order: higher score first, ties by lower gallery index, so results match the CPU kernels exactly.
//
// Versions:
//   topk_f32_v1        grid (queries, slices): one block scores one query against one slice of the gallery, a
//                      warp per row (lane-strided dot product, shuffle reduction). Rows at or above the block's
//                      threshold are appended to a shared-memory candidate buffer; when it may overflow, the
//                      block bitonic-sorts kept + candidates and keeps the k best (the k-th score becomes the
//                      threshold). Writes k (score, index) pairs per (query, slice).
//   topk_merge_f32_v1  one block per query: the same buffer-and-sort over the slices' candidates -> final top-k.
//   k <= 2048 (sort buffer of 4096 pairs, 32 KiB of shared memory). Not yet measured on a GPU.
//   Fixed (no version bump: a correctness fix): a warp could push candidates while a slower warp was still reading
//   the round's pending count, so the two could disagree about compacting (whose barriers then mismatched).

#define TK_SORT 4096
#define TK_ROUND 256

struct TkState {
    float score[TK_SORT];
    unsigned index[TK_SORT];
    int kept;      // valid sorted entries at the front
    int pending;   // candidates appended after them
    float thr;     // a new candidate must reach this (>=)
};

// a ranks before b.
__device__ __forceinline__ bool tk_better(float sa, unsigned ia, float sb, unsigned ib) {
    return sa > sb || (sa == sb && ia < ib);
}

// Sorts kept + pending (best first) and keeps the k best. All threads of the block call it.
__device__ void tk_compact(TkState& st, int k) {
    __syncthreads();
    const int total = st.kept + st.pending;
    int n = 1;
    while (n < total) n <<= 1;
    for (int i = total + threadIdx.x; i < n; i += blockDim.x) {
        st.score[i] = NEG_INF;
        st.index[i] = 0xffffffffu;
    }
    __syncthreads();
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                const int j = i ^ stride;
                if (j <= i) continue;
                // Blocks of `size` alternate direction; the last pass (size == n) leaves everything best first.
                const bool best_first = (i & size) == 0;
                const bool j_better = tk_better(st.score[j], st.index[j], st.score[i], st.index[i]);
                if (j_better == best_first) {
                    const float s = st.score[i];
                    const unsigned x = st.index[i];
                    st.score[i] = st.score[j];
                    st.index[i] = st.index[j];
                    st.score[j] = s;
                    st.index[j] = x;
                }
            }
            __syncthreads();
        }
    }
    if (threadIdx.x == 0) {
        st.kept = min(total, k);
        st.pending = 0;
        if (st.kept == k) st.thr = st.score[k - 1];
    }
    __syncthreads();
}

// Appends one candidate (any thread; called only for score >= thr).
__device__ __forceinline__ void tk_push(TkState& st, float s, unsigned idx) {
    const int slot = atomicAdd(&st.pending, 1);
    st.score[st.kept + slot] = s;
    st.index[st.kept + slot] = idx;
}

__device__ void tk_init(TkState& st) {
    if (threadIdx.x == 0) {
        st.kept = 0;
        st.pending = 0;
        st.thr = NEG_INF;
    }
    __syncthreads();
}

// Grid: (queries, slices); block: 256 threads. queries [nq, dim] (normalized, scaled); gallery [rows, dim];
// inv_norms [rows] or null; out_score / out_index [nq, slices, k].
extern "C" __global__ void __launch_bounds__(256) topk_f32_v1(float* __restrict__ out_score,
                                                              unsigned* __restrict__ out_index,
                                                              const float* __restrict__ queries,
                                                              const float* __restrict__ gallery,
                                                              const float* __restrict__ inv_norms, int rows,
                                                              int dim, int k, int rows_per_slice) {
    __shared__ TkState st;
    extern __shared__ float sq[];  // the query, dim floats
    const int q = blockIdx.x, slice = blockIdx.y, slices = gridDim.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) sq[d] = queries[(size_t)q * dim + d];
    tk_init(st);
    const int r0 = slice * rows_per_slice, r1 = min(rows, r0 + rows_per_slice);
    for (int base = r0; base < r1; base += TK_ROUND) {
        // At most TK_ROUND candidates per round: make room first.
        if (st.kept + st.pending + TK_ROUND > TK_SORT) tk_compact(st, k);
        const float thr = st.thr;
        // Every thread has read pending (and so taken the same branch: tk_compact holds barriers) and thr before
        // any thread pushes. Found by the simulator's ThreadSanitizer build.
        __syncthreads();
        for (int r = base + warp; r < min(r1, base + TK_ROUND); r += warps) {
            const float* g = gallery + (size_t)r * dim;
            float dot = 0.0f;
            for (int d = lane; d < dim; d += WARP_SIZE) dot += g[d] * sq[d];
            dot = warp_sum(dot);
            if (inv_norms) dot *= inv_norms[r];
            if (lane == 0 && dot >= thr) tk_push(st, dot, (unsigned)r);
        }
        __syncthreads();
    }
    tk_compact(st, k);
    float* os = out_score + ((size_t)q * slices + slice) * k;
    unsigned* oi = out_index + ((size_t)q * slices + slice) * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        os[i] = i < st.kept ? st.score[i] : NEG_INF;
        oi[i] = i < st.kept ? st.index[i] : 0xffffffffu;
    }
}

// Grid: queries; block: 256 threads. Candidates [nq, n] (score, index) -> out [nq, k], best first.
extern "C" __global__ void __launch_bounds__(256) topk_merge_f32_v1(float* __restrict__ out_score,
                                                                    unsigned* __restrict__ out_index,
                                                                    const float* __restrict__ cand_score,
                                                                    const unsigned* __restrict__ cand_index, int n,
                                                                    int k) {
    __shared__ TkState st;
    const int q = blockIdx.x;
    tk_init(st);
    for (int base = 0; base < n; base += TK_ROUND) {
        if (st.kept + st.pending + TK_ROUND > TK_SORT) tk_compact(st, k);
        const float thr = st.thr;
        __syncthreads();  // as in topk_f32_v1: all reads of pending and thr before the first push
        const int i = base + threadIdx.x;
        if (threadIdx.x < TK_ROUND && i < n) {
            const float s = cand_score[(size_t)q * n + i];
            const unsigned x = cand_index[(size_t)q * n + i];
            if (x != 0xffffffffu && s >= thr) tk_push(st, s, x);
        }
        __syncthreads();
    }
    tk_compact(st, k);
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        out_score[(size_t)q * k + i] = i < st.kept ? st.score[i] : NEG_INF;
        out_index[(size_t)q * k + i] = i < st.kept ? st.index[i] : 0xffffffffu;
    }
}
