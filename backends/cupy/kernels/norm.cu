// Batch normalisation (per channel of NCHW), float32.
//
// Per-channel reductions run in two stages. channel_partials: block (c, split) of T threads (a power of two
// from 32 to 256, by the chunk's length) sums the elements of channel c whose flat (n, hw) index lies in
// [split * chunk, (split + 1) * chunk): thread t takes the indices split * chunk + t, + T, + 2T, ... as a running
// float32 sum, then the block tree of common.cuh.
// channel_finalize / bn_stats then add the splits' partial sums in ascending split order. The backward's two
// sums (dbeta, dgamma) share one pass, bn_backward_partials, which also applies the forward's fused activation.
// The forward's statistics take one launch, bn_partials: each block sums its chunk, then sums the squared
// deviations from the chunk's own mean (a second pass over the chunk, from cache); bn_stats merges the chunks'
// (sum, squared deviations) pairs as Chan et al.'s parallel variance does, so no sum of squares is ever
// subtracted from another.
#include "common.cuh"

// f(off) for the elements of channel c whose flat (n, hw) index lies in this block's chunk [begin, end), off
// being the element's NCHW offset: thread t takes begin + t, + blockDim.x, + 2 blockDim.x, ... in order, the
// flat index stepped as step_n * HW + step_hw without a division per element.
template <class F>
__device__ __forceinline__ void for_chunk(int C, int HW, int c, int begin, int end, F f) {
    const int step_n = blockDim.x / HW, step_hw = blockDim.x % HW;
    int n = (begin + threadIdx.x) / HW, hw = (begin + threadIdx.x) % HW;
    for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
        f((n * C + c) * HW + hw);
        n += step_n;
        hw += step_hw;
        if (hw >= HW) {
            hw -= HW;
            ++n;
        }
    }
}

// The block's sum of channel c's values in its chunk [begin, end): for_chunk's running sums, then the block tree.
__device__ __forceinline__ float chunk_sum(const float* a, int C, int HW, int c, int begin, int end, float* sh) {
    float acc = 0.0f;
    for_chunk(C, HW, c, begin, end, [&](int off) { acc += a[off]; });
    return block_sum(acc, sh);
}

extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
channel_partials(const float* __restrict__ a, int N, int C, int HW, int chunk, float* __restrict__ partial) {
    __shared__ float sh[CNN_MAX_BLOCK];
    const int c = blockIdx.x, split = blockIdx.y, begin = split * chunk;
    const float total = chunk_sum(a, C, HW, c, begin, min(N * HW, begin + chunk), sh);
    if (threadIdx.x == 0) partial[c * gridDim.y + split] = total;
}

// The forward's statistics per (channel c, split), the chunks as channel_partials': partial[c, split] is the
// chunk's sum s (in channel_partials' order) and partial[C + c, split] the sum of (a - s / n)^2 over its n
// values, in the same order.
extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
bn_partials(const float* __restrict__ a, int N, int C, int HW, int chunk, float* __restrict__ partial) {
    __shared__ float sh[CNN_MAX_BLOCK];
    const int c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const int begin = split * chunk, end = min(N * HW, begin + chunk);
    const float total = chunk_sum(a, C, HW, c, begin, end, sh);
    const float mu = total / (float)(end - begin);
    float sq = 0.0f;
    for_chunk(C, HW, c, begin, end, [&](int off) {
        const float d = a[off] - mu;
        sq += d * d;
    });
    const float total_sq = block_sum(sq, sh);
    if (threadIdx.x == 0) {
        partial[c * splits + split] = total;
        partial[(C + c) * splits + split] = total_sq;
    }
}

// The backward's two sums in one pass, per (channel c, split) as channel_partials and in the same order: with
// g = activate_grad(act, dy, y) (act: the activation the forward applied, from its output y; ACT_NONE: g = dy)
// and x_hat = (x - mean[c]) * invstd[c], partial[c, split] sums g (dbeta) and partial[C + c, split] sums
// g * x_hat (dgamma).
extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
bn_backward_partials(const float* __restrict__ dy, const float* __restrict__ y, const float* __restrict__ x,
                     const float* __restrict__ mean, const float* __restrict__ invstd, int act, float slope, int N,
                     int C, int HW, int chunk, float* __restrict__ partial) {
    __shared__ float sh[CNN_MAX_BLOCK];
    const int c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const int begin = split * chunk, end = min(N * HW, begin + chunk);
    const float mu = mean[c], sc = invstd[c];
    float sum_g = 0.0f, sum_g_xhat = 0.0f;
    for_chunk(C, HW, c, begin, end, [&](int off) {
        const float g = activate_grad(act, dy[off], y[off], slope);
        sum_g += g;
        sum_g_xhat += g * ((x[off] - mu) * sc);
    });
    const float total_g = block_sum(sum_g, sh);
    const float total_g_xhat = block_sum(sum_g_xhat, sh);
    if (threadIdx.x == 0) {
        partial[c * splits + split] = total_g;
        partial[(C + c) * splits + split] = total_g_xhat;
    }
}

// out[c] = (sum over splits in ascending order of partial[c, split]) / divisor.
extern "C" __global__ void channel_finalize(const float* __restrict__ partial, int C, int splits, float divisor,
                                            float* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) acc += partial[c * splits + s];
    out[c] = acc / divisor;
}

// Training: from bn_partials' chunks (of `chunk` values, the last one the rest of `count`), the batch mean (the
// chunk sums added in ascending order) and the biased variance (each chunk's squared deviations plus
// n (chunk mean - mean)^2, added in ascending order) -> mean and invstd, and the running statistics moved in
// place (running = (1 - momentum) running + momentum batch, with the unbiased variance).
// Eval: mean and invstd from the running statistics.
extern "C" __global__ void bn_stats(const float* __restrict__ partial, int C, int splits, int chunk, int count,
                                    float eps, float momentum, int training, float* __restrict__ mean,
                                    float* __restrict__ invstd, float* __restrict__ running_mean,
                                    float* __restrict__ running_var) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    if (!training) {
        mean[c] = running_mean[c];
        invstd[c] = 1.0f / sqrtf(running_var[c] + eps);
        return;
    }
    float total = 0.0f;
    for (int s = 0; s < splits; ++s) total += partial[c * splits + s];
    const float mu = total / (float)count;
    float sq = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float n = (float)min(chunk, count - s * chunk), d = partial[c * splits + s] / n - mu;
        sq += partial[(C + c) * splits + s] + n * d * d;
    }
    mean[c] = mu;
    const float var = sq / (float)count;
    invstd[c] = 1.0f / sqrtf(var + eps);
    running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mu;
    running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (var * ((float)count / (float)(count - 1)));
}

// y = act(((x - mean) * invstd) * gamma + beta), one thread per element (act: common.cuh's codes).
extern "C" __global__ void bn_normalize(const float* __restrict__ x, const float* __restrict__ mean,
                                        const float* __restrict__ invstd, const float* __restrict__ gamma,
                                        const float* __restrict__ beta, float* __restrict__ y, int total, int C,
                                        int HW, int act, float slope) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int c = (i / HW) % C;
    y[i] = activate(act, ((x[i] - mean[c]) * invstd[c]) * gamma[c] + beta[c], slope);
}

// With g = activate_grad(act, dy, y) as in bn_backward_partials: training: dx = gamma invstd (g - dbeta / count -
// x_hat dgamma / count); eval: dx = gamma invstd g.
extern "C" __global__ void bn_backward_dx(const float* __restrict__ dy, const float* __restrict__ y,
                                          const float* __restrict__ x, const float* __restrict__ mean,
                                          const float* __restrict__ invstd, const float* __restrict__ gamma,
                                          const float* __restrict__ dgamma, const float* __restrict__ dbeta,
                                          float* __restrict__ dx, int total, int C, int HW, int count, int training,
                                          int act, float slope) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int c = (i / HW) % C;
    const float scale = gamma[c] * invstd[c];
    const float g = activate_grad(act, dy[i], y[i], slope);
    if (!training) {
        dx[i] = g * scale;
        return;
    }
    const float x_hat = (x[i] - mean[c]) * invstd[c];
    dx[i] = scale * (g - dbeta[c] / (float)count - x_hat * (dgamma[c] / (float)count));
}
