// The optimizer's update, float32.
#include "common.cuh"

// One SGD step on one parameter, in place (the sgd_step op of backends/__init__.py): g = grad (+ weight_decay *
// param); the momentum buffer (has_buf) becomes g on the first step, else buf * momentum + (keep * g, or g when
// there is no dampening; keep = 1 - dampening); param -= lr * (g + momentum * buf if nesterov else buf). Every
// product and sum rounds on its own (__fmul_rn, __fadd_rn: nvcc would fuse a * b + c), in the order of the
// numpy backend's array arithmetic, so both give the same bits.
extern "C" __global__ void sgd_step(float* __restrict__ param, const float* __restrict__ grad,
                                    float* __restrict__ buf, int n, int has_buf, int first, int nesterov,
                                    int has_decay, int has_dampening, float lr, float momentum, float keep,
                                    float weight_decay) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float p = param[i];
    float g = has_decay ? __fadd_rn(grad[i], __fmul_rn(weight_decay, p)) : grad[i];
    if (has_buf) {
        const float b = first ? g : __fadd_rn(__fmul_rn(buf[i], momentum), has_dampening ? __fmul_rn(keep, g) : g);
        buf[i] = b;
        g = nesterov ? __fadd_rn(g, __fmul_rn(momentum, b)) : b;
    }
    param[i] = __fsub_rn(p, __fmul_rn(lr, g));
}
