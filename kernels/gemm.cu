// gemm.cu — out[M, N] = epilogue(x[M, K] · w[N, K]ᵀ + bias[N]) in fp16 storage with f32 accumulation.
//
// Both operands are K-contiguous (x row-major, w in PyTorch's nn.Linear layout), which is exactly what
// mma.sync's row.col form wants: both tiles sit in shared memory as [rows][BK] and load with plain ldmatrix.
// The epilogue (bias, quick_gelu/gelu, or residual accumulate into `out`) runs on the f32 accumulators before the
// single fp16 store.
//
// Versions (measured numbers belong here once a GPU run has them; see BENCHMARKS.md):
//   gemm_f16_v1  64×64×32 block tile, 4 warps of 32×32, mma.sync m16n8k16 fed by ldmatrix.x4; one stage:
//                cp.async 16-byte copies with zero fill when K % 8 == 0 (rows stay 16-byte aligned), element
//                loads otherwise (ViT-L/14's patch GEMM has K = 588). Not yet measured on a GPU.
//   gemm_f16_v2  128×128×32 block tile, 8 warps of 64×32 (16 mma per k16 step per warp), a 3-stage cp.async
//                pipeline in 60 KiB of dynamic shared memory (the next two k tiles load while one is multiplied).
//                Needs K % 8 == 0 and 16-byte aligned operands; the host runs v1 otherwise. Same epilogue as v1.
//                Not yet measured on a GPU (not the default until it is).
//   gemm_f16_v3  v1's 64×64×32 tile and 4 warps with a 4-stage cp.async pipeline (40 KiB dynamic shared memory):
//                for small M (batch 1: 50 rows), where v1 waits a full memory latency per k tile and v2's 128-wide
//                tiles leave most SMs idle (ViT-B/32's fc2 at batch 1 is 6 blocks of v2, 12 of v3, 96 k tiles
//                each). Same conditions and epilogue as v2. Validated on the simulator; not yet measured.

// The fused epilogue of every variant, on one f32 accumulator: + bias, then the residual add or the activation,
// then the single fp16 store.
__device__ __forceinline__ void gemm_store(half_t* __restrict__ out, const half_t* __restrict__ bias, float v, int row,
                                           int col, int N, int has_bias, int epilogue) {
    if (has_bias) v += h2f(bias[col]);
    half_t* o = out + (size_t)row * N + col;
    if (epilogue == EPI_ACCUMULATE) v += h2f(*o);
    else if (epilogue == EPI_QUICK_GELU) v = quick_gelu(v);
    else if (epilogue == EPI_GELU) v = gelu(v);
    else if (epilogue == EPI_GELU_TANH) v = gelu_tanh(v);
    *o = f2h(v);
}

// Stores one warp's accumulators (tile origin row0, col0) through the fused epilogue. Accumulator e of tile (i, j)
// is row g (+8 for e >= 2), column 2·t4 + (e & 1) of that 16×8 tile.
template <int MI, int NJ>
__device__ __forceinline__ void warp_store(const float (&acc)[MI][NJ][4], half_t* __restrict__ out,
                                           const half_t* __restrict__ bias, int M, int N, int row0, int col0, int lane,
                                           int has_bias, int epilogue) {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = row0 + i * 16 + g + (e >> 1) * 8;
                const int col = col0 + j * 8 + t4 * 2 + (e & 1);
                if (row < M && col < N) gemm_store(out, bias, acc[i][j][e], row, col, N, has_bias, epilogue);
            }
}

// One warp's share of a k tile: acc[MI][NJ] (MI m16 × NJ n8 tiles at rows wm, columns wn) += A·Bᵀ over BK, both
// tiles [rows][lds] in shared memory, K-contiguous.
template <int MI, int NJ, int BK>
__device__ __forceinline__ void warp_mma_k(float (&acc)[MI][NJ][4], const half_t* A, const half_t* B, int lds, int wm,
                                           int wn, int lane) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        unsigned a[MI][4], b[NJ][2];
#pragma unroll
        for (int i = 0; i < MI; i++) {
            // Matrices 0..3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15):
            // the a0..a3 registers of the m16n8k16 A fragment.
            const int r = wm + i * 16 + (lane & 15), c = kk + (lane >> 4) * 8;
            ldmatrix_x4(a[i], &A[r * lds + c]);
        }
#pragma unroll
        for (int j = 0; j < NJ; j += 2) {
            // Matrices = (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): b0, b1 of two
            // adjacent n8 tiles (w is [n][k], so an untransposed load gives the column-major B fragment).
            const int r = wn + j * 8 + (lane & 7) + ((lane >> 4) << 3), c = kk + ((lane >> 3) & 1) * 8;
            unsigned t[4];
            ldmatrix_x4(t, &B[r * lds + c]);
            b[j][0] = t[0];
            b[j][1] = t[1];
            b[j + 1][0] = t[2];
            b[j + 1][1] = t[3];
        }
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) mma_m16n8k16(acc[i][j], a[i], b[j]);
    }
}

#define G1_BK 32
// Row stride of a shared tile in halves: 40 halves = 80 bytes keeps 16-byte alignment and puts the 8 row
// addresses of one ldmatrix in 8 different 4-bank groups (no bank conflicts).
#define G1_LDS (G1_BK + 8)

// Loads rows [row0, row0 + 64) × columns [k0, k0 + 32) of a [rows, K] matrix into a shared tile, zero-padded.
__device__ __forceinline__ void g1_load_tile(half_t* tile, const half_t* __restrict__ g, int rows, int K, int row0,
                                             int k0, bool vec) {
    // 64 rows × 4 chunks of 8 halves = 256 chunks over 128 threads.
    for (int c = threadIdx.x; c < G1_TILE * (G1_BK / 8); c += blockDim.x) {
        int r = c >> 2, kc = (c & 3) * 8;
        int gr = row0 + r, gk = k0 + kc;
        half_t* dst = tile + r * G1_LDS + kc;
        if (vec) {
            // K % 8 == 0, so a chunk is either wholly inside the row or wholly past its end.
            bool inside = gr < rows && gk < K;
            cp_async_16(dst, inside ? g + (size_t)gr * K + gk : g, inside ? 16 : 0);
        } else {
            for (int e = 0; e < 8; e++) {
                dst[e] = (gr < rows && gk + e < K) ? g[(size_t)gr * K + gk + e] : (half_t)0;
            }
        }
    }
}

// Grid: (ceil(N / 64), ceil(M / 64)); block: 128 threads. `vec` must be 0 unless K % 8 == 0 and both x and w
// are 16-byte aligned. `bias` is read only when has_bias != 0.
extern "C" __global__ void __launch_bounds__(G1_THREADS) gemm_f16_v1(half_t* __restrict__ out, const half_t* __restrict__ x,
                                                              const half_t* __restrict__ w,
                                                              const half_t* __restrict__ bias, int M, int N, int K,
                                                              int has_bias, int epilogue, int vec) {
    __shared__ __align__(16) half_t As[G1_TILE * G1_LDS];
    __shared__ __align__(16) half_t Bs[G1_TILE * G1_LDS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bm = blockIdx.y * G1_TILE, bn = blockIdx.x * G1_TILE;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += G1_BK) {
        g1_load_tile(As, x, M, K, bm, k0, vec != 0);
        g1_load_tile(Bs, w, N, K, bn, k0, vec != 0);
        cp_async_wait_all();
        __syncthreads();
        warp_mma_k<2, 4, G1_BK>(acc, As, Bs, G1_LDS, wm, wn, lane);
        __syncthreads();
    }

    warp_store<2, 4>(acc, out, bias, M, N, bm + wm, bn + wn, lane, has_bias, epilogue);
}

// GP_BK (the k step) and GP_LDS (the padded shared-memory row) are generated (src/cuda/kernels.rs).

// One stage of a pipelined variant: rows [row0, row0 + ROWS) × k [k0, k0 + 32) of a [rows, K] matrix, 16-byte
// cp.async, zero-filled past the matrix edge (K % 8 == 0: a chunk is wholly inside or wholly outside a row).
template <int ROWS, int THREADS>
__device__ __forceinline__ void gp_load(half_t* tile, const half_t* __restrict__ g, int rows, int K, int row0,
                                        int k0) {
    for (int c = threadIdx.x; c < ROWS * (GP_BK / 8); c += THREADS) {
        const int r = c >> 2, kc = (c & 3) * 8;
        const int gr = row0 + r, gk = k0 + kc;
        const bool inside = gr < rows && gk < K;
        cp_async_16(tile + r * GP_LDS + kc, inside ? g + (size_t)gr * K + gk : g, inside ? 16 : 0);
    }
}

// The multi-stage variants: a BM×BN block tile over WARPS_M × WARPS_N warps, STAGES k tiles of 32 in flight in
// dynamic shared memory ([STAGES][BM][LDS] for x, then [STAGES][BN][LDS] for w); the next STAGES − 1 k tiles load
// while one is multiplied. Needs K % 8 == 0 and 16-byte aligned operands (the host runs v1 otherwise).
template <int BM, int BN, int STAGES, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void gemm_pipelined(half_t* smem, half_t* __restrict__ out, const half_t* __restrict__ x,
                                               const half_t* __restrict__ w, const half_t* __restrict__ bias, int M,
                                               int N, int K, int has_bias, int epilogue) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
    constexpr int MI = WTM / 16, NJ = WTN / 8;
    half_t* As = smem;
    half_t* Bs = smem + STAGES * BM * GP_LDS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    const int wm = (warp / WARPS_N) * WTM, wn = (warp % WARPS_N) * WTN;
    const int ktiles = (K + GP_BK - 1) / GP_BK;

    float acc[MI][NJ][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    // Prologue: the first STAGES − 1 k tiles in flight.
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) {
            gp_load<BM, THREADS>(As + s * BM * GP_LDS, x, M, K, bm, s * GP_BK);
            gp_load<BN, THREADS>(Bs + s * BN * GP_LDS, w, N, K, bn, s * GP_BK);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; kt++) {
        // Tile kt has landed (at most STAGES − 2 younger groups pending); every warp is done with tile kt − 1,
        // whose stage the next load overwrites.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < ktiles) {
            const int s = next % STAGES;
            gp_load<BM, THREADS>(As + s * BM * GP_LDS, x, M, K, bm, next * GP_BK);
            gp_load<BN, THREADS>(Bs + s * BN * GP_LDS, w, N, K, bn, next * GP_BK);
        }
        cp_async_commit();  // possibly empty: keeps the group count in step with kt
        const half_t* A = As + (kt % STAGES) * BM * GP_LDS;
        const half_t* B = Bs + (kt % STAGES) * BN * GP_LDS;
        warp_mma_k<MI, NJ, GP_BK>(acc, A, B, GP_LDS, wm, wn, lane);
    }
    cp_async_wait<0>();

    warp_store<MI, NJ>(acc, out, bias, M, N, bm + wm, bn + wn, lane, has_bias, epilogue);
}

// The pipelined variants' tile, stages, threads and dynamic shared memory (G2_*, G3_*: STAGES · 2 · TILE · GP_LDS
// halves) are generated from src/cuda/kernels.rs, which launches them. Every gemm variant takes v1's parameter
// list; the pipelined ones ignore `vec` (the host runs them only where 16-byte chunks are valid).

// Grid: (ceil(N / G2_TILE), ceil(M / G2_TILE)); block: G2_THREADS; dynamic shared memory G2_SMEM bytes.
extern "C" __global__ void __launch_bounds__(G2_THREADS) gemm_f16_v2(half_t* __restrict__ out, const half_t* __restrict__ x,
                                                              const half_t* __restrict__ w,
                                                              const half_t* __restrict__ bias, int M, int N, int K,
                                                              int has_bias, int epilogue, int vec) {
    extern __shared__ __align__(16) half_t smem[];
    gemm_pipelined<G2_TILE, G2_TILE, G2_STAGES, 2, 4>(smem, out, x, w, bias, M, N, K, has_bias, epilogue);
}

// Grid: (ceil(N / G3_TILE), ceil(M / G3_TILE)); block: G3_THREADS; dynamic shared memory G3_SMEM bytes.
extern "C" __global__ void __launch_bounds__(G3_THREADS) gemm_f16_v3(half_t* __restrict__ out, const half_t* __restrict__ x,
                                                              const half_t* __restrict__ w,
                                                              const half_t* __restrict__ bias, int M, int N, int K,
                                                              int has_bias, int epilogue, int vec) {
    extern __shared__ __align__(16) half_t smem[];
    gemm_pipelined<G3_TILE, G3_TILE, G3_STAGES, 2, 2>(smem, out, x, w, bias, M, N, K, has_bias, epilogue);
}
