// layernorm.cu — row-wise LayerNorm, out = (x − mean) / sqrt(var + eps) · gamma + beta, fp16 in and out,
// statistics in f32 (ARCHITECTURE.md, trap 6: fp16 statistics visibly shift embeddings). The residual add that precedes each
// LayerNorm in the encoder is fused into the GEMM epilogue that produces x (gemm.cu, EPI_ACCUMULATE).
//
// Versions:
//   layernorm_f16_v1  one warp per row, 8 rows per block; two passes over the row (mean, then the centred sum
//                     of squares: no cancellation for rows with a large mean), a third to write. Not yet measured.

// Grid: ceil(rows / ROWS_PER_BLOCK); block: ROWS_PER_BLOCK warps (src/cuda/kernels.rs).
extern "C" __global__ void __launch_bounds__(256) layernorm_f16_v1(half_t* __restrict__ out,
                                                                   const half_t* __restrict__ x,
                                                                   const half_t* __restrict__ gamma,
                                                                   const half_t* __restrict__ beta, int rows,
                                                                   int dim, float eps) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const half_t* xr = x + (size_t)row * dim;
    float sum = 0.0f;
    for (int d = lane; d < dim; d += WARP_SIZE) sum += h2f(xr[d]);
    const float mean = warp_sum(sum) / dim;
    float sq = 0.0f;
    for (int d = lane; d < dim; d += WARP_SIZE) {
        const float c = h2f(xr[d]) - mean;
        sq += c * c;
    }
    const float rstd = rsqrtf(warp_sum(sq) / dim + eps);
    half_t* o = out + (size_t)row * dim;
    for (int d = lane; d < dim; d += WARP_SIZE) {
        o[d] = f2h((h2f(xr[d]) - mean) * rstd * h2f(gamma[d]) + h2f(beta[d]));
    }
}
