// Elementwise activations and row-wise softmax / log-softmax over (N, C), float32.
//
// Activations: one thread per element (activate / activate_grad of common.cuh, the same code the fused
// conv epilogue runs).
// Softmax: one block per row (blockDim.x a power of two in [32, 256]). Summation order: thread t takes the
// columns t, t + blockDim.x, ... as a running float32 sum, then the block tree of common.cuh; the row max
// is found the same way. Forward: y = exp(x - max) / sum, log_y = (x - max) - log(sum).
#include "common.cuh"

extern "C" __global__ void activation_fwd(const float* __restrict__ x, float* __restrict__ y, int n, int act,
                                          float slope) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = activate(act, x[i], slope);
}

// y = act(a + b): a residual block's sum and the activation after it in one pass.
extern "C" __global__ void add_activation_fwd(const float* __restrict__ a, const float* __restrict__ b,
                                              float* __restrict__ y, int n, int act, float slope) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = activate(act, a[i] + b[i], slope);
}

extern "C" __global__ void activation_bwd(const float* __restrict__ dy, const float* __restrict__ y,
                                          float* __restrict__ dx, int n, int act, float slope) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = activate_grad(act, dy[i], y[i], slope);
}

// Row n of y = softmax(x) (or log_softmax when take_log).
extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
softmax_fwd(const float* __restrict__ x, float* __restrict__ y, int C, int take_log) {
    __shared__ float sh[CNN_MAX_BLOCK];
    const float* xr = x + blockIdx.x * C;
    float* yr = y + blockIdx.x * C;
    float m = neg_inf_f();
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, xr[j]);
    m = block_max(m, sh);
    float acc = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) acc += expf(xr[j] - m);
    const float total = block_sum(acc, sh);
    const float log_total = logf(total);
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        yr[j] = take_log ? (xr[j] - m) - log_total : expf(xr[j] - m) / total;
}

// softmax:     dx = y * (dy - sum(dy * y))
// log_softmax: dx = dy - exp(y) * sum(dy)
extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
softmax_bwd(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx, int C,
            int take_log) {
    __shared__ float sh[CNN_MAX_BLOCK];
    const int row = blockIdx.x * C;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) acc += take_log ? dy[row + j] : dy[row + j] * y[row + j];
    const float total = block_sum(acc, sh);
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        dx[row + j] = take_log ? dy[row + j] - expf(y[row + j]) * total : y[row + j] * (dy[row + j] - total);
}
