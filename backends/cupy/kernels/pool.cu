// Max, average and Lp pooling, forward and backward, NCHW float32 (PyTorch semantics).
//
// Forward: one thread per output element, window cells visited row by row (i, then j, ascending).
// Backward:
//  * max: one thread per output element does atomicAdd(dx[argmax], dy) (the op gets only dy, argmax and
//    the input shape, not the window geometry, so it cannot gather). Race-free through the atomic; with
//    non-overlapping windows (stride >= kernel) each dx cell receives at most one value, so the result is
//    exact and deterministic; with overlapping windows the order of the additions into one cell is not
//    fixed, so that sum is reproducible only to float32 rounding.
//  * average and Lp: gather, one thread per input element summing over the windows that contain it in
//    ascending (oh, ow) order: race-free and deterministic.
//
// Summation order: a window is summed as a running float32 sum over its cells in the order above; a
// backward gather as a running sum over its windows in ascending (oh, ow) order.
#include "common.cuh"

#define POOL_PARAMS int N, int C, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw

// y = max over the window (padding counts as -inf); argmax = h * W + w of the first maximum, a NaN winning
// (and the last NaN among several, like PyTorch); a window of -inf still points at its first real cell.
extern "C" __global__ void max_pool2d_fwd(const float* __restrict__ x, float* __restrict__ y,
                                          long long* __restrict__ argmax, POOL_PARAMS, int dh, int dw) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int ow = idx % OW, oh = (idx / OW) % OH, plane = idx / (OH * OW);
    const float* xp = x + plane * H * W;
    float best = neg_inf_f();
    int best_at = -1;
    for (int i = 0; i < kh; ++i) {
        const int h = oh * sh - ph + i * dh;
        if (h < 0 || h >= H) continue;
        for (int j = 0; j < kw; ++j) {
            const int w = ow * sw - pw + j * dw;
            if (w < 0 || w >= W) continue;
            const float v = xp[h * W + w];
            if (best_at < 0 || v > best || isnan(v)) {
                best = v;
                best_at = h * W + w;
            }
        }
    }
    y[idx] = best;
    argmax[idx] = best_at;
}

// dx (zeroed by the launcher) += dy at each output's argmax cell.
extern "C" __global__ void max_pool2d_bwd(const float* __restrict__ dy, const long long* __restrict__ argmax,
                                          float* __restrict__ dx, int total, int out_plane, int in_plane) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const long long at = argmax[idx];
    if (at >= 0) atomicAdd(dx + (idx / out_plane) * in_plane + (int)at, dy[idx]);
}

// Window [h0, h1) x [w0, w1) of output (oh, ow), clipped to the input, and PyTorch's divisor: the window
// clipped to the padded input, counted with padding when count_include_pad, else the clipped window.
struct Window {
    int h0, h1, w0, w1;
    float divisor;
};

__device__ __forceinline__ Window avg_window(int oh, int ow, int H, int W, int kh, int kw, int sh, int sw,
                                             int ph, int pw, int count_include_pad) {
    int h0 = oh * sh - ph, w0 = ow * sw - pw;
    int h1 = min(h0 + kh, H + ph), w1 = min(w0 + kw, W + pw);
    const int padded = (h1 - h0) * (w1 - w0);
    h0 = max(h0, 0);
    w0 = max(w0, 0);
    h1 = min(h1, H);
    w1 = min(w1, W);
    return Window{h0, h1, w0, w1, (float)(count_include_pad ? padded : (h1 - h0) * (w1 - w0))};
}

extern "C" __global__ void avg_pool2d_fwd(const float* __restrict__ x, float* __restrict__ y, POOL_PARAMS,
                                          int count_include_pad) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int ow = idx % OW, oh = (idx / OW) % OH, plane = idx / (OH * OW);
    const float* xp = x + plane * H * W;
    const Window win = avg_window(oh, ow, H, W, kh, kw, sh, sw, ph, pw, count_include_pad);
    float acc = 0.0f;
    for (int h = win.h0; h < win.h1; ++h)
        for (int w = win.w0; w < win.w1; ++w) acc += xp[h * W + w];
    y[idx] = acc / win.divisor;
}

// Output rows [first, last) whose window (start o * stride - pad, length k) holds input row i.
__device__ __forceinline__ int first_window(int i, int k, int stride, int pad) {
    return i + pad < k ? 0 : (i + pad - k) / stride + 1;
}

__device__ __forceinline__ int end_window(int i, int stride, int pad, int out) {
    return min((i + pad) / stride + 1, out);
}

extern "C" __global__ void avg_pool2d_bwd(const float* __restrict__ dy, float* __restrict__ dx, POOL_PARAMS,
                                          int count_include_pad) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    const int w = idx % W, h = (idx / W) % H, plane = idx / (H * W);
    const float* dyp = dy + plane * OH * OW;
    float acc = 0.0f;
    for (int oh = first_window(h, kh, sh, ph); oh < end_window(h, sh, ph, OH); ++oh)
        for (int ow = first_window(w, kw, sw, pw); ow < end_window(w, sw, pw, OW); ++ow) {
            const Window win = avg_window(oh, ow, H, W, kh, kw, sh, sw, ph, pw, count_include_pad);
            acc += dyp[oh * OW + ow] / win.divisor;
        }
    dx[idx] = acc;
}

// |v| ** p, and r ** (1 / p), exact for the common p = 1 and p = 2 (and for the backward's p - 1 = 0 and 1);
// NaN ** 0 is 1, as powf.
__device__ __forceinline__ float pow_abs(float v, float p) {
    return p == 2.0f ? v * v : (p == 1.0f ? fabsf(v) : (p == 0.0f ? 1.0f : powf(fabsf(v), p)));
}

__device__ __forceinline__ float root_p(float r, float p) {
    return p == 2.0f ? sqrtf(r) : (p == 1.0f ? r : powf(r, 1.0f / p));
}

// y = (sum over the window of |x| ** p) ** (1 / p); padding cells are zeros and add nothing.
extern "C" __global__ void lp_pool2d_fwd(const float* __restrict__ x, float* __restrict__ y, float p,
                                         POOL_PARAMS) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * OH * OW) return;
    const int ow = idx % OW, oh = (idx / OW) % OH, plane = idx / (OH * OW);
    const float* xp = x + plane * H * W;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    float acc = 0.0f;
    for (int h = max(h0, 0); h < min(h0 + kh, H); ++h)
        for (int w = max(w0, 0); w < min(w0 + kw, W); ++w) acc += pow_abs(xp[h * W + w], p);
    y[idx] = root_p(acc, p);
}

// dx = sign(x) |x| ** (p - 1) * sum over windows of dy / y ** (p - 1); windows with y == 0 and cells with
// x == 0 give 0 (times the window sum). Non-finite values as PyTorch's autograd of the same formula (and the
// NumPy backend): a NaN window passes dy / NaN ** (p - 1) on (NaN, except 1 for p = 1); a NaN cell has sign 0,
// so its gradient is 0 * NaN ** (p - 1), NaN except for p = 1.
extern "C" __global__ void lp_pool2d_bwd(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ y, float* __restrict__ dx, float p,
                                         POOL_PARAMS) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    const int w = idx % W, h = (idx / W) % H, plane = idx / (H * W);
    const float xv = x[idx];
    const float sign = xv > 0.0f ? 1.0f : (xv < 0.0f ? -1.0f : 0.0f);  // NaN: 0, as torch.sign
    const float magnitude = xv == 0.0f ? 0.0f : pow_abs(xv, p - 1.0f);
    const float* dyp = dy + plane * OH * OW;
    const float* yp = y + plane * OH * OW;
    float acc = 0.0f;
    for (int oh = first_window(h, kh, sh, ph); oh < end_window(h, sh, ph, OH); ++oh)
        for (int ow = first_window(w, kw, sw, pw); ow < end_window(w, sw, pw, OW); ++ow) {
            const float yv = yp[oh * OW + ow];
            if (yv != 0.0f) acc += dyp[oh * OW + ow] / pow_abs(yv, p - 1.0f);  // y >= 0 or NaN
        }
    dx[idx] = acc * (sign * magnitude);
}
