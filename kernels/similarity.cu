// similarity.cu — CLIP's score: out[i, j] = scale · ⟨a_i / |a_i|, b_j / |b_j|⟩ for f32 embeddings a [rows_a, dim]
// and b [rows_b, dim], normalization fused in (an all-zero row scores 0, as on the host). The zero-shot sizes
// (a few images × up to thousands of prompts); retrieval-scale fused top-k is a separate kernel family.
//
// Versions:
//   scaled_cosine_f32_v1  one warp per output: the dot product and both squared norms in one pass over the two
//                         rows, f32 partial sums reduced with shuffles. Not yet measured on a GPU.

// Grid: ceil(rows_a · rows_b / 8); block: 256 threads (8 warps, one output each).
extern "C" __global__ void __launch_bounds__(256) scaled_cosine_f32_v1(float* __restrict__ out,
                                                                       const float* __restrict__ a,
                                                                       const float* __restrict__ b, int rows_a,
                                                                       int rows_b, int dim, float scale) {
    const size_t k = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (k >= (size_t)rows_a * rows_b) return;
    const float* ra = a + (k / rows_b) * dim;
    const float* rb = b + (k % rows_b) * dim;
    float dot = 0.0f, na = 0.0f, nb = 0.0f;
    for (int d = lane; d < dim; d += WARP_SIZE) {
        const float x = ra[d], y = rb[d];
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot = warp_sum(dot);
    na = warp_sum(na);
    nb = warp_sum(nb);
    if (lane == 0) {
        const float denom = sqrtf(na) * sqrtf(nb);
        out[k] = denom > 0.0f ? scale * dot / denom : 0.0f;
    }
}
