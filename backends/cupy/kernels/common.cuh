// Shared device helpers for the cnnkit CuPy kernels (float32 only).
//
// The Python loader (backends/cupy/_module.py) pastes this file in place of the line that includes it
// before handing a kernel file to cupy.RawModule, so CuPy's on-disk cache key covers this text too; nvcc
// (the CI compile check) resolves the same include from the kernel directory.
//
// Block reductions below assume blockDim.x is a power of two in [32, 256] (the launchers pick it) and
// combine values in a fixed tree order: at step s = blockDim.x / 2, blockDim.x / 4, ..., 1 thread t adds
// thread t + s's partial to its own. The result therefore depends only on the block size and the data.
//
// Every kernel also runs on the CPU simulator (backends/cudasim, in every CI run): use only the CUDA built-ins
// its shim header defines (backends/cudasim/cudasim.h). A new feature (warp shuffles, tensor-core mma/wmma,
// cooperative groups) needs its emulation there first, so that no kernel is ever outside CI.
#ifndef CNNKIT_COMMON_CUH
#define CNNKIT_COMMON_CUH

#define CNN_MAX_BLOCK 256

// Activation codes: backends/cupy/_module.py ACT_CODES mirrors these (tests/test_cuda_compile.py checks it).
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_SIGMOID 3
#define ACT_TANH 4
#define ACT_SCALED_TANH 5

// LeCun's scaled tanh A * tanh(S * x); the same constants as cnnkit.backends.SCALED_TANH_A / _S.
#define SCALED_TANH_A 1.7159f
#define SCALED_TANH_S (2.0f / 3.0f)

__device__ __forceinline__ float neg_inf_f() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }

// y = act(v); `slope` is leaky_relu's negative slope. NaN propagates as in PyTorch (relu(NaN) = NaN: the
// comparisons are written so that NaN takes the identity branch).
__device__ __forceinline__ float activate(int act, float v, float slope) {
    switch (act) {
        case ACT_RELU: return v <= 0.0f ? 0.0f : v;
        case ACT_LEAKY_RELU: return v > 0.0f ? v : v * slope;
        case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
        case ACT_TANH: return tanhf(v);
        case ACT_SCALED_TANH: return SCALED_TANH_A * tanhf(SCALED_TANH_S * v);
        default: return v;
    }
}

// d act / d v expressed through the output y alone, times dy (relu at y = NaN passes dy, as PyTorch).
// 1 - y^2 is written (1 - y)(1 + y) to avoid cancellation where tanh saturates.
__device__ __forceinline__ float activate_grad(int act, float dy, float y, float slope) {
    switch (act) {
        case ACT_RELU: return y <= 0.0f ? 0.0f : dy;
        case ACT_LEAKY_RELU: return y > 0.0f ? dy : dy * slope;
        case ACT_SIGMOID: return dy * y * (1.0f - y);
        case ACT_TANH: return dy * (1.0f - y) * (1.0f + y);
        case ACT_SCALED_TANH: {
            const float t = y / SCALED_TANH_A;
            return dy * (SCALED_TANH_A * SCALED_TANH_S) * (1.0f - t) * (1.0f + t);
        }
        default: return dy;
    }
}

// Sum of v over the block (tree order above); every thread gets the total. `sh` holds blockDim.x floats.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    const float total = sh[0];
    __syncthreads();  // sh may be reused by the caller's next reduction
    return total;
}

// Maximum of v over the block; every thread gets it.
__device__ __forceinline__ float block_max(float v, float* sh) {
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    const float total = sh[0];
    __syncthreads();
    return total;
}

#endif  // CNNKIT_COMMON_CUH
