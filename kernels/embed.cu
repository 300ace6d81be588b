// embed.cu — the tensor plumbing around the towers, fp16: patch extraction for the patch-embedding GEMM, the
// vision tower's class token and position add, the text tower's token and position lookup, and the row gather
// that pools one row per sequence. Memory-bound one-thread-per-element kernels; the sums are done in f32.
//
// Versions:
//   im2col_f16_v1        pixels [B, C, S, S] -> rows [B·g², C·p·p] in the conv kernel's (c, y, x) order.
//   vision_embed_f16_v1  out[b, 0] = class + pos[0]; out[b, 1 + i] = patches[b·(seq−1) + i] + pos[1 + i].
//   text_embed_f16_v1    out[r] = token[ids[r]] + pos[r mod seq] (ids validated on the host).
//   gather_rows_f16_v1   out[i] = x[rows[i]] (rows validated on the host).
// None measured on a GPU yet.

// Grid-stride over the B·g²·C·p² outputs.
extern "C" __global__ void im2col_f16_v1(half_t* __restrict__ out, const half_t* __restrict__ pixels, int batch,
                                         int channels, int size, int patch) {
    const int grid = size / patch, pd = channels * patch * patch;
    const size_t total = (size_t)batch * grid * grid * pd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int col = (int)(i % pd);
        const size_t prow = i / pd;  // b·g² + gy·g + gx
        const int p = (int)(prow % (grid * grid)), b = (int)(prow / (grid * grid));
        const int gy = p / grid, gx = p % grid;
        const int c = col / (patch * patch), y = (col / patch) % patch, xx = col % patch;
        out[i] = pixels[(((size_t)b * channels + c) * size + gy * patch + y) * size + gx * patch + xx];
    }
}

extern "C" __global__ void vision_embed_f16_v1(half_t* __restrict__ out, const half_t* __restrict__ patches,
                                               const half_t* __restrict__ cls, const half_t* __restrict__ pos,
                                               int batch, int seq, int dim) {
    const size_t total = (size_t)batch * seq * dim;
    // A null `cls`: no class token, the patches start at row 0.
    const int lead = cls ? 1 : 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(i % dim), t = (int)((i / dim) % seq);
        const size_t b = i / ((size_t)seq * dim);
        const float v = t < lead ? h2f(cls[d]) : h2f(patches[(b * (seq - lead) + t - lead) * dim + d]);
        out[i] = f2h(v + h2f(pos[(size_t)t * dim + d]));
    }
}

extern "C" __global__ void text_embed_f16_v1(half_t* __restrict__ out, const unsigned* __restrict__ ids,
                                             const half_t* __restrict__ token, const half_t* __restrict__ pos,
                                             int rows, int seq, int dim) {
    const size_t total = (size_t)rows * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(i % dim);
        const size_t r = i / dim;
        const float v = h2f(token[(size_t)ids[r] * dim + d]) + h2f(pos[(r % seq) * dim + d]);
        out[i] = f2h(v);
    }
}

extern "C" __global__ void gather_rows_f16_v1(half_t* __restrict__ out, const half_t* __restrict__ x,
                                              const unsigned* __restrict__ rows, int n, int dim) {
    const size_t total = (size_t)n * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = x[(size_t)rows[i / dim] * dim + i % dim];
    }
}
