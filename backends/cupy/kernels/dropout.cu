// The inverted-dropout mask, float32.
#include "common.cuh"

// Inverted-dropout mask from a counter-based hash: element i is kept (value `scale` = 1 / (1 - p)) when the
// top 24 bits of splitmix64(seed + (offset + i + 1) * 0x9E3779B97F4A7C15) are >= threshold = ceil(p * 2^24),
// else 0. A pure function of (seed, offset + i): the same seed gives the same mask on any device and launch
// shape, and a mask at `offset` is the slice of a bigger one from that element on.
extern "C" __global__ void dropout_mask(float* __restrict__ out, int n, unsigned long long seed,
                                        unsigned long long offset, unsigned int threshold, float scale) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long z = seed + (offset + (unsigned long long)i + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    out[i] = (unsigned int)(z >> 40) >= threshold ? scale : 0.0f;
}
