// Softmax cross-entropy over (N, C) logits with int64 labels, float32, no host synchronisation.
//
// xent_rows: one block per row (blockDim.x a power of two in [32, 256]): row max and sum of exp(x - max)
// as in activation.cu (thread-strided running sums, then the block tree of common.cuh);
// row_loss = log(sum) - (x[label] - max), dlogits = (softmax - onehot) / N. A label outside [0, C) (not
// checked on the host, which would need a sync) makes that row's loss NaN, so the mean loss shows it.
// mean_rows: one block; thread t sums rows t, t + blockDim.x, ... in order, then the block tree; / N.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
xent_rows(const float* __restrict__ logits, const long long* __restrict__ labels, int N, int C,
          float* __restrict__ row_loss, float* __restrict__ dlogits) {
    __shared__ float sh[CNN_MAX_BLOCK];
    const int row = blockIdx.x;
    const float* x = logits + row * C;
    float* g = dlogits + row * C;
    float m = neg_inf_f();
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_max(m, sh);
    float acc = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) acc += expf(x[j] - m);
    const float total = block_sum(acc, sh);
    const long long label = labels[row];
    const bool valid = label >= 0 && label < C;
    if (threadIdx.x == 0) row_loss[row] = valid ? logf(total) - (x[label] - m) : nan_f();
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        g[j] = (expf(x[j] - m) / total - (j == label ? 1.0f : 0.0f)) / (float)N;
}

extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
mean_rows(const float* __restrict__ row_loss, int N, float* __restrict__ loss) {
    __shared__ float sh[CNN_MAX_BLOCK];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) acc += row_loss[i];
    const float total = block_sum(acc, sh);
    if (threadIdx.x == 0) loss[0] = total / (float)N;
}
