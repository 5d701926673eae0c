// 2-D convolution (cross-correlation as PyTorch's conv2d), NCHW, weights (K, C/groups, R, S), float32.
//
// Two paths; backends/cupy/conv.py picks one per layer shape (conv_path):
//  * direct: one thread per output element (forward), one per input element (backward data), one block
//    per weight element (backward weight); for narrow layers (LeNet C1's forward and data gradient,
//    depthwise).
//  * tiled implicit GEMM: within group g the conv is a matrix product whose operands are gathered on the
//    fly (never materialised) into shared-memory tiles of BM x TILE_K (A) and TILE_K x BN (B):
//        forward         Y[k, (n,oh,ow)]   = sum over (c,r,s)    W[k, (c,r,s)]    * Xcol[(c,r,s), (n,oh,ow)]
//        backward data   dX[c, (n,h,w)]    = sum over (k,r,s)    W[k, c, r, s]    * dYcol[(k,r,s), (n,h,w)]
//        backward weight dW[k, (c,r,s)]    = sum over (n,oh,ow)  dY[k, (n,oh,ow)] * Xcol[(c,r,s), (n,oh,ow)]
//    256 threads per block (gemm_tile): 16 TM x 64 output tiles with TM 1, 2 or 4, and for GEMMs of fewer
//    than 32 rows a wide 16 x 256 tile instead of TM = 1 (but for a weight gradient of at most 64 columns);
//    the launcher picks the largest tile the layer's rows fill, so each gathered B element serves as many rows
//    as it can. A strided conv's data gradient (without dilation) runs phase by phase (PhaseDataOp): each
//    phase's input pixels meet output pixels through a fixed subset of the taps, so only those are gathered.
//
// Summation order (float32, every product added with fmaf):
//  * forward and backward data, both paths: each output is one running sum from 0 over the reduction index in
//    ascending lexicographic order, (c, r, s) forward and (k, r, s) backward data, so the two paths give the same
//    values (a zero's sign aside; the phase kernels skip only taps that add nothing); except where the tiled GEMM
//    has too few output tiles to fill the GPU (a linear layer's small batch): then its reduction is cut into
//    `splits` consecutive chunks (a multiple of TILE_K each), each a running sum, and sum_splits adds the chunk
//    sums in ascending order before the bias and the activation. Forward taps in the padding contribute w * 0 (as
//    im2col does: a non-finite weight makes its whole output NaN, as in PyTorch); backward-data taps that meet no
//    output pixel (out of range, or between strided output pixels) add nothing, so a non-finite weight reaches only
//    the dx cells it touches (as col2im). Then bias is added, then the activation.
//  * backward weight, direct: the flat (n, oh, ow) range is cut into `splits` consecutive chunks; in each,
//    thread t of a block of T threads (a power of two from 32 to 256, by the chunk's length) sums the indices
//    t, t + T, t + 2T, ... of the chunk in order, the block tree of common.cuh combines the T partials, and
//    sum_splits adds the chunk sums in ascending order.
//  * backward weight, tiled: the (n, oh, ow) range is cut into `splits` consecutive chunks (a multiple of
//    TILE_K each); each chunk is a running sum in ascending order; sum_splits adds the chunk sums in
//    ascending chunk order.
#include "common.cuh"

#define TILE_N 64
#define TILE_K 16
#define GEMM_THREADS 256

// The geometry of one conv, as the launchers pass it (all ints, after the array arguments).
#define CONV_PARAMS int N, int C, int H, int W, int K, int OH, int OW, int R, int S, int stride_h, \
    int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups
#define CONV_GEOM ConvGeom{N, C, H, W, K, OH, OW, R, S, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, \
    groups, K / groups, C / groups, R * S, OH * OW}

struct ConvGeom {
    int N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups;
    int Kg, Cg, RS, P;  // out channels per group, in channels per group, R * S, OH * OW
};

// Xcol: input x[n, c, ih, iw] under tap (r, s) of output pixel (oh, ow); 0 in the padding.
__device__ __forceinline__ float x_col(const ConvGeom& q, const float* x, int n, int c, int r, int s,
                                       int oh, int ow) {
    const int ih = oh * q.sh - q.pt + r * q.dh;
    const int iw = ow * q.sw - q.pl + s * q.dw;
    if (ih < 0 || ih >= q.H || iw < 0 || iw >= q.W) return 0.0f;
    return x[((n * q.C + c) * q.H + ih) * q.W + iw];
}

// The output pixel (oh, ow) whose window corner lies th rows and tw columns above and left of an input pixel
// (in padded coordinates): false when none does (out of range, or between strided output pixels). Stride 1
// (most layers) needs no division.
__device__ __forceinline__ bool out_pixel(const ConvGeom& q, int th, int tw, int& oh, int& ow) {
    if (th < 0 || tw < 0) return false;
    oh = th;
    ow = tw;
    if (q.sh != 1 || q.sw != 1) {
        if (th % q.sh != 0 || tw % q.sw != 0) return false;
        oh = th / q.sh;
        ow = tw / q.sw;
    }
    return oh < q.OH && ow < q.OW;
}

// dYcol: true and v = the dy[n, k, oh, ow] that input pixel (h, w) meets through tap (r, s), or false (v = 0)
// when no output pixel does (out of range, or between strided output pixels).
__device__ __forceinline__ bool dy_tap(const ConvGeom& q, const float* dy, int n, int k, int r, int s, int h,
                                       int w, float& v) {
    v = 0.0f;
    int oh, ow;
    if (!out_pixel(q, h + q.pt - r * q.dh, w + q.pl - s * q.dw, oh, ow)) return false;
    v = dy[((n * q.K + k) * q.OH + oh) * q.OW + ow];
    return true;
}

__device__ __forceinline__ float epilogue(float acc, const float* bias, int has_bias, int k, int act,
                                          float slope) {
    return activate(act, has_bias ? acc + bias[k] : acc, slope);
}

// ------------------------------------------------------------------------------------------------ direct
// y[n, k, oh, ow] = act(sum_{c, r, s} w[k, c, r, s] * Xcol + bias[k]); one thread per output element.
extern "C" __global__ void conv2d_fwd_direct(const float* __restrict__ x, const float* __restrict__ w,
                                             const float* __restrict__ bias, int has_bias, int act, float slope,
                                             float* __restrict__ y, CONV_PARAMS) {
    const ConvGeom q = CONV_GEOM;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * K * q.P) return;
    const int ow = idx % OW, oh = (idx / OW) % OH, k = (idx / q.P) % K, n = idx / (q.P * K);
    const int c0 = (k / q.Kg) * q.Cg;
    const float* wk = w + k * q.Cg * q.RS;
    float acc = 0.0f;
    for (int c = 0; c < q.Cg; ++c)
        for (int r = 0; r < R; ++r)
            for (int s = 0; s < S; ++s)
                acc = fmaf(wk[(c * R + r) * S + s], x_col(q, x, n, c0 + c, r, s, oh, ow), acc);
    y[idx] = epilogue(acc, bias, has_bias, k, act, slope);
}

// dx[n, c, h, w] = sum_{k in c's group, r, s} w[k, c, r, s] * dYcol; one thread per input element.
extern "C" __global__ void conv2d_bwd_data_direct(const float* __restrict__ dy, const float* __restrict__ w,
                                                  float* __restrict__ dx, CONV_PARAMS) {
    const ConvGeom q = CONV_GEOM;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    const int iw = idx % W, ih = (idx / W) % H, c = (idx / (H * W)) % C, n = idx / (H * W * C);
    const int grp = c / q.Cg, cl = c % q.Cg;
    float acc = 0.0f;
    if (q.RS == 1) {  // one tap (a 1x1 kernel, e.g. a strided projection): find its output pixel once
        int oh, ow;
        if (out_pixel(q, ih + q.pt, iw + q.pl, oh, ow)) {
            const float* dyk = dy + ((n * K + grp * q.Kg) * OH + oh) * OW + ow;
            const float* wk = w + grp * q.Kg * q.Cg + cl;
            for (int kl = 0; kl < q.Kg; ++kl) acc = fmaf(wk[kl * q.Cg], dyk[kl * q.P], acc);
        }
        dx[idx] = acc;
        return;
    }
    for (int kl = 0; kl < q.Kg; ++kl) {
        const int k = grp * q.Kg + kl;
        const float* wkc = w + (k * q.Cg + cl) * q.RS;
        for (int r = 0; r < R; ++r)
            for (int s = 0; s < S; ++s) {
                float v;
                if (dy_tap(q, dy, n, k, r, s, ih, iw, v)) acc = fmaf(wkc[r * S + s], v, acc);
            }
    }
    dx[idx] = acc;
}

// dw[k, c, r, s] = sum_{n, oh, ow} dy[n, k, oh, ow] * Xcol; one block per weight element (blockIdx.x)
// and chunk (blockIdx.y) of `chunk` flat (n, oh, ow) indices, whose sum goes to out[chunk index][weight element].
extern "C" __global__ void __launch_bounds__(CNN_MAX_BLOCK)
conv2d_bwd_weight_direct(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
                         int chunk, CONV_PARAMS) {
    __shared__ float partial[CNN_MAX_BLOCK];
    const ConvGeom q = CONV_GEOM;
    const int widx = blockIdx.x;  // flat index into (K, Cg, R, S)
    const int s = widx % S, r = (widx / S) % R, cl = (widx / q.RS) % q.Cg, k = widx / (q.RS * q.Cg);
    const int c = (k / q.Kg) * q.Cg + cl;
    const int begin = blockIdx.y * chunk, end = min(begin + chunk, N * q.P);
    float acc = 0.0f;
    for (int j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const int n = j / q.P, p = j % q.P;
        acc = fmaf(dy[(n * K + k) * q.P + p], x_col(q, x, n, c, r, s, p / OW, p % OW), acc);
    }
    const float total = block_sum(acc, partial);
    if (threadIdx.x == 0) out[blockIdx.y * gridDim.x + widx] = total;
}

// ------------------------------------------------------------------------------------------------ tiled
// One BM x BN output tile of C = A B with rows [m0, m0 + BM), columns [n0, n0 + BN) and reduction [k_begin, k_end).
// The block's 256 threads form a TY x (256 / TY) grid; thread (tx, ty) owns the RPT rows RPT ty + i and the 4
// columns 4 tx + j, so BM = TY RPT and BN = 4 TX: TY = 16 gives the 16 RPT x 64 tiles, TY = 4 with RPT = 4 the
// "wide" 16 x 256 tile, whose 4 x 4 outputs per thread read half as much shared memory per FMA as the 1 x 4 of a 16
// x 64 tile. A thread's rows and columns are adjacent in the 16-byte aligned tiles, so each k reads them as one
// vector load apiece (LDS.128 for 4 floats). The gathers' index arithmetic (divisions by runtime sizes) is done
// once, not per element: Op::col(col) once per thread for the one B column it loads (256 is a multiple of BN or BN
// of 256), and Op::tap(kk) once per reduction index of a k-step, into a shared table the whole block reads. The
// next k-step's gathers are issued before this one's FMAs (into registers, stored to the shared tiles after the
// k-step), so their memory latency overlaps the arithmetic. Op supplies a(m, tap), b(tap, col) and store(m, col,
// value); when Op::kMasked, b is b(tap, col, v) -> bool and, in a k-step whose A tile holds a non-finite value, a
// product whose b is false is skipped rather than added as a * 0 (with finite A, adding a * 0 leaves the sum's
// value as it is).
template <int TY, int RPT, class Op>
__device__ __forceinline__ void gemm_tile(const Op& op, int M, int Ncol, int k_begin, int k_end, int m0,
                                          int n0) {
    using Tap = typename Op::Tap;
    constexpr int TX = GEMM_THREADS / TY, BM = TY * RPT, BN = 4 * TX;
    constexpr int A_LOADS = (BM * TILE_K) / GEMM_THREADS, B_LOADS = (TILE_K * BN) / GEMM_THREADS;
    static_assert(GEMM_THREADS % BN == 0 || BN % GEMM_THREADS == 0, "B columns must map onto the threads");
    __shared__ __align__(16) float As[TILE_K][BM + 4];  // +4: the column-wise stores below, 2-way bank conflicts
    __shared__ __align__(16) float Bs[TILE_K][BN];
    __shared__ bool Bm[Op::kMasked ? TILE_K : 1][BN];  // the B element exists (masked ops only)
    __shared__ Tap taps[2][TILE_K];                     // this k-step's and the next one's
    __shared__ int nonfinite_a[2];                      // masked ops: non-finite A values in a k-step's tile
    const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
    const int bcol = tid % BN;
    const bool bcol_inside = n0 + bcol < Ncol;
    const typename Op::Col col = op.col(bcol_inside ? n0 + bcol : 0);
    float acc[RPT][4];
    for (int i = 0; i < RPT; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    // The next k-step's tile, gathered into registers while this one's FMAs run.
    float a_next[A_LOADS], b_next[B_LOADS];
    bool b_exists[Op::kMasked ? B_LOADS : 1];
    auto gather = [&](int k0, const Tap* t) {
        for (int l = 0; l < A_LOADS; ++l) {
            const int e = tid + GEMM_THREADS * l, kk = e % TILE_K, m = e / TILE_K;
            a_next[l] = (m0 + m < M && k0 + kk < k_end) ? op.a(m0 + m, t[kk]) : 0.0f;
        }
        for (int l = 0; l < B_LOADS; ++l) {  // column bcol of B
            const int kk = (tid + GEMM_THREADS * l) / BN;
            const bool inside = bcol_inside && k0 + kk < k_end;
            if constexpr (Op::kMasked) {
                float v = 0.0f;
                b_exists[l] = inside && op.b(t[kk], col, v);
                b_next[l] = v;
            } else {
                b_next[l] = inside ? op.b(t[kk], col) : 0.0f;
            }
        }
    };

    if (tid < TILE_K && k_begin + tid < k_end) taps[0][tid] = op.tap(k_begin + tid);
    if constexpr (Op::kMasked)
        if (tid == 0) nonfinite_a[0] = 0;
    __syncthreads();
    if (k_begin < k_end) gather(k_begin, taps[0]);
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K, buf ^= 1) {
        for (int l = 0; l < A_LOADS; ++l) {
            const int e = tid + GEMM_THREADS * l;
            As[e % TILE_K][e / TILE_K] = a_next[l];
            if constexpr (Op::kMasked)
                if (!isfinite(a_next[l])) atomicAdd(&nonfinite_a[buf], 1);
        }
        for (int l = 0; l < B_LOADS; ++l) {
            const int kk = (tid + GEMM_THREADS * l) / BN;
            Bs[kk][bcol] = b_next[l];
            if constexpr (Op::kMasked) Bm[kk][bcol] = b_exists[l];
        }
        const int k1 = k0 + TILE_K;
        if (tid < TILE_K && k1 + tid < k_end) taps[buf ^ 1][tid] = op.tap(k1 + tid);
        if constexpr (Op::kMasked)
            if (tid == 0) nonfinite_a[buf ^ 1] = 0;
        __syncthreads();
        if (k1 < k_end) gather(k1, taps[buf ^ 1]);
        bool masked = false;
        if constexpr (Op::kMasked) masked = nonfinite_a[buf] != 0;
        if (masked) {
            if constexpr (Op::kMasked)
                for (int kk = 0; kk < TILE_K; ++kk)
                    for (int i = 0; i < RPT; ++i)
                        for (int j = 0; j < 4; ++j)
                            if (Bm[kk][4 * tx + j])
                                acc[i][j] = fmaf(As[kk][RPT * ty + i], Bs[kk][4 * tx + j], acc[i][j]);
        } else {
            for (int kk = 0; kk < TILE_K; ++kk) {
                float a[RPT], b[4];
                for (int i = 0; i < RPT; ++i) a[i] = As[kk][RPT * ty + i];
                for (int j = 0; j < 4; ++j) b[j] = Bs[kk][4 * tx + j];
                for (int i = 0; i < RPT; ++i)
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < RPT; ++i)
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + RPT * ty + i, c = n0 + 4 * tx + j;
            if (m < M && c < Ncol) op.store(m, c, acc[i][j]);
        }
}

// Where tap (r, s) of input channel c sits relative to an output pixel's window corner: the offset in x
// (from the corner's flat index) and the row and column steps (for the padding test).
struct XTap {
    int off, dr, ds;
};

__device__ __forceinline__ XTap x_tap(const ConvGeom& q, int c, int rs) {
    const int r = rs / q.S, s = rs % q.S;
    return XTap{(c * q.H + r * q.dh) * q.W + s * q.dw, r * q.dh, s * q.dw};
}

// Output pixel p = (oh, ow) of image n: the flat index of its window corner in channel c0 of x (may be
// negative: the corner can lie in the padding) and the corner's row and column.
struct XWindow {
    int base, ih0, iw0;
};

__device__ __forceinline__ XWindow x_window(const ConvGeom& q, int n, int c0, int p) {
    const int ih0 = (p / q.OW) * q.sh - q.pt, iw0 = (p % q.OW) * q.sw - q.pl;
    return XWindow{((n * q.C + c0) * q.H + ih0) * q.W + iw0, ih0, iw0};
}

// Xcol for a window and a tap: x at the tap, 0 in the padding.
__device__ __forceinline__ float x_at(const ConvGeom& q, const float* x, const XWindow& win, const XTap& t) {
    const int ih = win.ih0 + t.dr, iw = win.iw0 + t.ds;
    if (ih < 0 || ih >= q.H || iw < 0 || iw >= q.W) return 0.0f;
    return x[win.base + t.off];
}

// Forward, group g, one reduction chunk: A = W (Kg x Cg RS), B = Xcol (Cg RS x N P), output y with the fused
// epilogue; a split reduction writes chunk `split`'s partial y, with no epilogue, at y[split] (sum_splits adds
// the partials and applies it).
struct FwdOp {
    static constexpr bool kMasked = false;
    struct Tap {
        int kk;
        XTap x;
    };
    using Col = XWindow;
    ConvGeom q;
    const float* x; const float* w; const float* bias; int has_bias, act; float slope; float* y; int g, split;
    __device__ Tap tap(int kk) const { return Tap{kk, x_tap(q, kk / q.RS, kk % q.RS)}; }
    __device__ Col col(int c) const { return x_window(q, c / q.P, g * q.Cg, c % q.P); }
    __device__ float a(int m, const Tap& t) const { return w[(g * q.Kg + m) * q.Cg * q.RS + t.kk]; }
    __device__ float b(const Tap& t, const Col& win) const { return x_at(q, x, win, t.x); }
    __device__ void store(int m, int c, float v) const {
        const int k = g * q.Kg + m, n = c / q.P, p = c % q.P;
        y[((split * q.N + n) * q.K + k) * q.P + p] = epilogue(v, bias, has_bias, k, act, slope);
    }
};

// Backward data, group g, one reduction chunk: A = W viewed as (Cg x Kg RS), B = dYcol (Kg RS x N H W,
// masked), output dx (chunk `split`'s partial dx at dx[split]).
struct DataOp {
    static constexpr bool kMasked = true;
    struct Tap {
        int w_off, dy_off, th, tw;  // w[k, 0, r, s], dy[0, k, 0, 0], and pad - (r, s) * dilation
    };
    struct Col {
        int dy_base, h, w;  // dy[n, 0, 0, 0] and the input pixel
    };
    ConvGeom q;
    const float* dy; const float* w; float* dx; int g, split;
    __device__ Tap tap(int kk) const {
        const int k = g * q.Kg + kk / q.RS, rs = kk % q.RS, r = rs / q.S, s = rs % q.S;
        return Tap{k * q.Cg * q.RS + rs, k * q.P, q.pt - r * q.dh, q.pl - s * q.dw};
    }
    __device__ Col col(int c) const {
        const int hw = q.H * q.W, n = c / hw;
        return Col{n * q.K * q.P, (c % hw) / q.W, c % q.W};
    }
    __device__ float a(int m, const Tap& t) const { return w[t.w_off + m * q.RS]; }
    __device__ bool b(const Tap& t, const Col& pix, float& v) const {
        v = 0.0f;
        int oh, ow;
        if (!out_pixel(q, pix.h + t.th, pix.w + t.tw, oh, ow)) return false;
        v = dy[pix.dy_base + t.dy_off + oh * q.OW + ow];
        return true;
    }
    __device__ void store(int m, int c, float v) const {
        const int hw = q.H * q.W, n = c / hw;
        dx[((split * q.N + n) * q.C + g * q.Cg + m) * hw + c % hw] = v;
    }
};

// Backward data of a strided conv without dilation, one phase (ph, pw) of group g: the input pixels
// (h, w) = (ph + sh i, pw + sw j) meet output pixels only through the taps (r, s) = (r0 + sh t, s0 + sw u), r0 =
// (ph + pad_t) mod sh and s0 likewise, at (oh, ow) = (bh + i - t, bw + j - u): A = W viewed as (Cg x Kg nr ns),
// B = dYcol over those taps only (masked where (oh, ow) is out of range), output dx at those pixels. A
// stride-2 3x3 layer's data gradient thus runs 2.25 taps per pixel instead of scanning 9, in the same
// ascending (k, r, s) order over the taps that exist.
struct PhaseDataOp {
    static constexpr bool kMasked = true;
    struct Tap {
        int w_off, dy_off, th, tw;  // w[k, 0, r, s], dy[0, k, 0, 0], and (bh - t, bw - u)
    };
    struct Col {
        int dy_base, i, j;  // dy[n, 0, 0, 0] and the pixel's row and column in the phase
    };
    ConvGeom q;
    const float* dy; const float* w; float* dx; int g, split;
    int ph, pw, Hp, Wp, r0, s0, nr, ns, bh, bw;
    __device__ PhaseDataOp(const ConvGeom& geom, const float* dy_, const float* w_, float* dx_, int g_, int split_,
                           int phase)
        : q(geom), dy(dy_), w(w_), dx(dx_), g(g_), split(split_), ph(phase / geom.sw), pw(phase % geom.sw) {
        Hp = ph < q.H ? (q.H - ph + q.sh - 1) / q.sh : 0;
        Wp = pw < q.W ? (q.W - pw + q.sw - 1) / q.sw : 0;
        r0 = (ph + q.pt) % q.sh;
        s0 = (pw + q.pl) % q.sw;
        nr = r0 < q.R ? (q.R - r0 + q.sh - 1) / q.sh : 0;
        ns = s0 < q.S ? (q.S - s0 + q.sw - 1) / q.sw : 0;
        bh = (ph + q.pt - r0) / q.sh;
        bw = (pw + q.pl - s0) / q.sw;
    }
    __device__ int reduction() const { return q.Kg * nr * ns; }
    __device__ int columns() const { return q.N * Hp * Wp; }
    __device__ Tap tap(int kk) const {
        const int taps = nr * ns, k = g * q.Kg + kk / taps, t = (kk % taps) / ns, u = kk % ns;
        return Tap{k * q.Cg * q.RS + (r0 + q.sh * t) * q.S + s0 + q.sw * u, k * q.P, bh - t, bw - u};
    }
    __device__ Col col(int c) const {
        const int hw = Hp * Wp;
        return Col{(c / hw) * q.K * q.P, (c % hw) / Wp, c % Wp};
    }
    __device__ float a(int m, const Tap& t) const { return w[t.w_off + m * q.RS]; }
    __device__ bool b(const Tap& t, const Col& pix, float& v) const {
        const int oh = pix.i + t.th, ow = pix.j + t.tw;
        v = 0.0f;
        if (oh < 0 || oh >= q.OH || ow < 0 || ow >= q.OW) return false;
        v = dy[pix.dy_base + t.dy_off + oh * q.OW + ow];
        return true;
    }
    __device__ void store(int m, int c, float v) const {
        const int hw = Hp * Wp, n = c / hw, h = ph + q.sh * ((c % hw) / Wp), x = pw + q.sw * (c % Wp);
        dx[(((split * q.N + n) * q.C + g * q.Cg + m) * q.H + h) * q.W + x] = v;
    }
};

// Backward weight, group g, one reduction chunk: A = dY (Kg x N P), B = Xcol^T (N P x Cg RS),
// output the chunk's partial dw at out[split][K][Cg RS].
struct WeightOp {
    static constexpr bool kMasked = false;
    struct Tap {
        int dy_off;  // dy[n, g Kg, oh, ow]
        XWindow x;   // the window of output pixel (n, oh, ow)
    };
    using Col = XTap;
    ConvGeom q;
    const float* dy; const float* x; float* out; int g, split;
    __device__ Tap tap(int kk) const {
        const int n = kk / q.P, p = kk % q.P;
        return Tap{(n * q.K + g * q.Kg) * q.P + p, x_window(q, n, g * q.Cg, p)};
    }
    __device__ Col col(int c) const { return x_tap(q, c / q.RS, c % q.RS); }
    __device__ float a(int m, const Tap& t) const { return dy[t.dy_off + m * q.P]; }
    __device__ float b(const Tap& t, const Col& xt) const { return x_at(q, x, t.x, xt); }
    __device__ void store(int m, int c, float v) const {
        const int per_split = q.K * q.Cg * q.RS;
        out[split * per_split + (g * q.Kg + m) * q.Cg * q.RS + c] = v;
    }
};

// Grid: x over column tiles, y over row tiles, z over groups times reduction chunks (`chunk` items each:
// block z takes group z % groups and chunk z / groups).
template <int TY, int RPT>
__device__ __forceinline__ void conv_fwd_gemm(const float* x, const float* w, const float* bias, int has_bias,
                                              int act, float slope, float* y, int chunk, const ConvGeom& q) {
    const int g = blockIdx.z % q.groups, split = blockIdx.z / q.groups, k_begin = split * chunk;
    const bool whole = chunk >= q.Cg * q.RS;  // else a partial sum: sum_splits applies the epilogue
    const FwdOp op{q, x, w, bias, whole ? has_bias : 0, whole ? act : 0, slope, y, g, split};
    gemm_tile<TY, RPT>(op, q.Kg, q.N * q.P, k_begin, min(q.Cg * q.RS, k_begin + chunk), blockIdx.y * TY * RPT,
                       blockIdx.x * 4 * (GEMM_THREADS / TY));
}

template <int TY, int RPT>
__device__ __forceinline__ void conv_data_gemm(const float* dy, const float* w, float* dx, int chunk,
                                               const ConvGeom& q) {
    const int g = blockIdx.z % q.groups, split = blockIdx.z / q.groups, k_begin = split * chunk;
    const DataOp op{q, dy, w, dx, g, split};
    gemm_tile<TY, RPT>(op, q.Cg, q.N * q.H * q.W, k_begin, min(q.Kg * q.RS, k_begin + chunk),
                       blockIdx.y * TY * RPT, blockIdx.x * 4 * (GEMM_THREADS / TY));
}

// Grid z: groups times sh sw phases times reduction chunks (block z takes group z % groups, phase
// (z / groups) % (sh sw) and chunk z / (groups sh sw)); x covers the largest phase's columns.
template <int TY, int RPT>
__device__ __forceinline__ void conv_phase_data_gemm(const float* dy, const float* w, float* dx, int chunk,
                                                     const ConvGeom& q) {
    const int phases = q.sh * q.sw, rest = blockIdx.z / q.groups, k_begin = (rest / phases) * chunk;
    const PhaseDataOp op(q, dy, w, dx, blockIdx.z % q.groups, rest / phases, rest % phases);
    const int n0 = blockIdx.x * 4 * (GEMM_THREADS / TY);
    if (n0 >= op.columns()) return;  // the whole block: this phase has fewer columns
    gemm_tile<TY, RPT>(op, q.Cg, op.columns(), k_begin, min(op.reduction(), k_begin + chunk), blockIdx.y * TY * RPT,
                       n0);
}

template <int TY, int RPT>
__device__ __forceinline__ void conv_weight_gemm(const float* dy, const float* x, float* out, int chunk,
                                                 const ConvGeom& q) {
    const int g = blockIdx.z % q.groups, split = blockIdx.z / q.groups;
    const int k_begin = split * chunk, k_end = min(q.N * q.P, k_begin + chunk);
    const WeightOp op{q, dy, x, out, g, split};
    gemm_tile<TY, RPT>(op, q.Kg, q.Cg * q.RS, k_begin, k_end, blockIdx.y * TY * RPT,
                       blockIdx.x * 4 * (GEMM_THREADS / TY));
}

// The tiled kernels: forward and data gradient in the wide 16 x 256 tile (16 to 31 rows) and 16 TM x 64 tiles
// (TM = 2, 4); the weight gradient, whose columns (Cg R S) are few, in 16 TM x 64 tiles (TM = 1, 2, 4) and,
// for 16 to 31 rows and more than 64 columns, the wide tile.
// extern "C" functions cannot be templates, and the simulator's build and the compile test read each kernel's
// name from its definition, so no macro writes them.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_fwd_gemm_wide(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                     int has_bias, int act, float slope, float* __restrict__ y, int chunk, CONV_PARAMS) {
    conv_fwd_gemm<4, 4>(x, w, bias, has_bias, act, slope, y, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_fwd_gemm_tm2(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    int has_bias, int act, float slope, float* __restrict__ y, int chunk, CONV_PARAMS) {
    conv_fwd_gemm<16, 2>(x, w, bias, has_bias, act, slope, y, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_fwd_gemm_tm4(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    int has_bias, int act, float slope, float* __restrict__ y, int chunk, CONV_PARAMS) {
    conv_fwd_gemm<16, 4>(x, w, bias, has_bias, act, slope, y, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_data_gemm_wide(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                          int chunk, CONV_PARAMS) {
    conv_data_gemm<4, 4>(dy, w, dx, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_data_gemm_tm2(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                         int chunk, CONV_PARAMS) {
    conv_data_gemm<16, 2>(dy, w, dx, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_data_gemm_tm4(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                         int chunk, CONV_PARAMS) {
    conv_data_gemm<16, 4>(dy, w, dx, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_data_phase_wide(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                           int chunk, CONV_PARAMS) {
    conv_phase_data_gemm<4, 4>(dy, w, dx, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_data_phase_tm2(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                          int chunk, CONV_PARAMS) {
    conv_phase_data_gemm<16, 2>(dy, w, dx, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_data_phase_tm4(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                          int chunk, CONV_PARAMS) {
    conv_phase_data_gemm<16, 4>(dy, w, dx, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_weight_gemm_wide(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
                            int chunk, CONV_PARAMS) {
    conv_weight_gemm<4, 4>(dy, x, out, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_weight_gemm_tm1(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
                           int chunk, CONV_PARAMS) {
    conv_weight_gemm<16, 1>(dy, x, out, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_weight_gemm_tm2(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
                           int chunk, CONV_PARAMS) {
    conv_weight_gemm<16, 2>(dy, x, out, chunk, CONV_GEOM);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
conv2d_bwd_weight_gemm_tm4(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
                           int chunk, CONV_PARAMS) {
    conv_weight_gemm<16, 4>(dy, x, out, chunk, CONV_GEOM);
}

// out[i] = act(sum over s = 0, 1, ..., splits - 1 (in that order) of partial[s * count + i] + bias[k]), k the
// channel of i in an (N, K, P) output: a split forward's epilogue (a gradient passes no bias and no activation).
extern "C" __global__ void sum_splits(const float* __restrict__ partial, int splits, int count,
                                      const float* __restrict__ bias, int has_bias, int act, float slope, int K,
                                      int P, float* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) acc += partial[s * count + i];
    out[i] = epilogue(acc, bias, has_bias, (i / P) % K, act, slope);
}
