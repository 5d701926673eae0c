"""Hand-written vector code, Numba: the machine's vector width, LLVM IR helpers, and the float32 tanh run.

LLVM compiles Numba's loops for AVX-512 machines with 256-bit vectors (its ``prefer-256-bit`` tuning), which
halves the throughput of arithmetic-heavy loops such as tanh. Intrinsics that write the IR themselves use vectors
as wide as the machine's; the conv register tiles (conv/simd.py) and :func:`tanh32_vectors` do.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array


def _vector_bytes() -> int:
    """64 when the CPU numba compiles for has AVX-512 (numba's NUMBA_CPU_FEATURES if set, else the host's)."""
    import llvmlite.binding as llvm

    features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = _vector_bytes()
I32, I64 = ir.IntType(32), ir.IntType(64)


def load(builder, ptr, vec, itemsize: int):
    """An unaligned vector load at element pointer ``ptr``."""
    value = builder.load(builder.bitcast(ptr, vec.as_pointer()))
    value.align = itemsize
    return value


def store(builder, value, ptr, itemsize: int) -> None:
    """An unaligned vector store of ``value`` at element pointer ``ptr``."""
    builder.store(value, builder.bitcast(ptr, value.type.as_pointer())).align = itemsize


def masked_load(builder, ptr, vec, mask):
    """The lanes of a vector at element pointer ``ptr`` where ``mask`` is set (0 elsewhere); nothing else is read."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec.as_pointer(), I32, mask.type, vec]),
                                        f"llvm.masked.load.{_name(vec)}.p0")
    return builder.call(fn, [builder.bitcast(ptr, vec.as_pointer()), ir.Constant(I32, 1), mask, ir.Constant(vec, None)])


def masked_store(builder, value, ptr, mask) -> None:
    """Store the lanes of ``value`` where ``mask`` is set at element pointer ``ptr``; nothing else is written."""
    vec = value.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ir.VoidType(), [vec, vec.as_pointer(), I32, mask.type]), f"llvm.masked.store.{_name(vec)}.p0")
    builder.call(fn, [value, builder.bitcast(ptr, vec.as_pointer()), ir.Constant(I32, 1), mask])


def _name(vec) -> str:
    """LLVM's name of a float vector type in intrinsic names: v16f32, v8f64, ..."""
    return f"v{vec.count}f{32 if isinstance(vec.element, ir.FloatType) else 64}"


def splat(builder, vec, scalar):
    """``scalar`` (an IR value) in every lane of vector type ``vec``."""
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(I32, vec.count), [0] * vec.count))


def vector_function(builder, vec, name: str, arity: int):
    """The LLVM intrinsic ``llvm.<name>`` on vector type ``vec`` (fma, fabs, floor, ...)."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * arity),
                                          f"llvm.{name}.{_name(vec)}")


def check_runs(name: str, dst, src) -> None:
    """A TypingError unless dst and src are 1-D C-contiguous arrays of one float dtype (the run intrinsics')."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == src.ndim == 1
            and dst.layout == src.layout == "C" and dst.dtype == src.dtype
            and dst.dtype in (types.float32, types.float64)):
        raise numba.core.errors.TypingError(f"{name} needs 1-D C-contiguous float arrays of one dtype")


def vector_type(context, dtype):
    """(itemsize, lanes, vector type) of the machine's vectors of the Numba float ``dtype``."""
    itemsize = np.dtype(dtype.name).itemsize
    lanes = VECTOR_BYTES // itemsize
    return itemsize, lanes, ir.VectorType(context.get_value_type(dtype), lanes)


def _run_arrays(context, builder, signature, args):
    """The dst and src arrays of a run intrinsic (its arguments 0 and 2)."""
    return (make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2))


def vector_loop(builder, count, lanes: int, name: str, body) -> None:
    """``body(j)`` for j = 0, lanes, 2 lanes, ... while j < count, as an IR loop (no iteration when count <= 0);
    body emits straight-line code into the loop block."""
    entry = builder.block
    loop, done = builder.append_basic_block(f"{name}_loop"), builder.append_basic_block(f"{name}_done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(I64, 0)), loop, done)
    builder.position_at_end(loop)
    j = builder.phi(I64)
    body(j)
    j_next = builder.add(j, ir.Constant(I64, lanes))
    j.add_incoming(ir.Constant(I64, 0), entry)
    j.add_incoming(j_next, loop)
    builder.cbranch(builder.icmp_signed("<", j_next, count), loop, done)
    builder.position_at_end(done)



# ----------------------------------------------------------------------------------------------- float32 tanh
# tanh(x) = x * P(x^2) / Q(x^2) for |x| <= TANH_CAP, a (4, 4) rational fitted (iteratively reweighted least
# squares, minimising the largest relative error) to tanh(x) / x on [0, TANH_CAP]: 2.1e-8 relative, 3.1e-7 in
# float32 arithmetic (on the tests' dense grid). All coefficients are positive: no cancellation at any x.
# The cap is 8, not the 9 where tanh rounds to 1 in float32: past 8.2 the rational rounds to 1 + 2^-23 (it ends
# at 0.99999994 from 8 on, 1 ulp below 1, so |tanh| <= 1 holds; the largest error stays 3.0e-7, near 6).
TANH_CAP = 8.0
TANH_P = (1.0, 0.133810252, 0.00349558773, 2.06090826e-05, 1.33546791e-08)
TANH_Q = (1.0, 0.467143416, 0.0258769803, 0.000328563445, 7.77656169e-07)


def _f32(builder, vec, value: float):
    return ir.Constant(vec, [float(np.float32(value))] * vec.count)


def _tanh_ir(builder, vec, x):
    """tanh of float32 vector ``x``: the rational above (the arithmetic of activation.tanh32), x clamped to
    +-TANH_CAP first; NaN passes through (the clamp's comparisons are false for it). Each clamp is written as
    ``cap < x ? cap : x`` (and the mirror), the operand order of x86's min and max: one instruction each."""
    fma = vector_function(builder, vec, "fma", 3)
    for cap, cmp in ((TANH_CAP, "<"), (-TANH_CAP, ">")):
        bound = _f32(builder, vec, cap)
        x = builder.select(builder.fcmp_ordered(cmp, bound, x), bound, x)
    t = builder.fmul(x, x)

    def horner(coefficients):
        acc = _f32(builder, vec, coefficients[-1])
        for c in reversed(coefficients[:-1]):
            acc = builder.call(fma, [acc, t, _f32(builder, vec, c)])
        return acc
    return builder.fdiv(builder.fmul(x, horner(TANH_P)), horner(TANH_Q))


def _scaled_tanh_ir(builder, vec, value, scalars):
    """a * tanh(s * (value + bias)) of float32 vector ``value``, ``scalars`` the float32 IR values (bias, a, s):
    the arithmetic of every float32 tanh intrinsic here, so they agree bit for bit."""
    bias_, a_, s_ = (splat(builder, vec, v) for v in scalars)
    return builder.fmul(a_, _tanh_ir(builder, vec, builder.fmul(s_, builder.fadd(value, bias_))))


def _is_float32_run(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32


@intrinsic
def tanh32_vectors(typingctx, dst, d0, src, s0, count, bias, scale_out, scale_in):
    """``tanh32_vectors(dst, d0, src, s0, count, bias, a, s)``: dst[d0 + u] = a * tanh(s * (src[s0 + u] + bias))
    for u < count, in float32, whole vectors and then one masked vector for the rest (so every element takes
    the same arithmetic); returns how many elements it wrote: count, or 0 unless dst and src are 1-D
    C-contiguous float32 arrays (the caller then computes the run)."""
    vectorised = _is_float32_run(dst) and _is_float32_run(src)
    sig = types.intp(dst, types.intp, src, types.intp, types.intp, types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        if not vectorised:
            return ir.Constant(I64, 0)
        dst_, src_ = _run_arrays(context, builder, signature, args)
        d0_, s0_, count_ = args[1], args[3], args[4]
        vec = ir.VectorType(ir.FloatType(), VECTOR_BYTES // 4)

        def tanh_at(u, load_at, store_at):
            value = load_at(builder.gep(src_.data, [builder.add(s0_, u)]))
            store_at(_scaled_tanh_ir(builder, vec, value, args[5:8]), builder.gep(dst_.data, [builder.add(d0_, u)]))

        whole = builder.mul(builder.sdiv(count_, ir.Constant(I64, vec.count)), ir.Constant(I64, vec.count))
        entry = builder.block
        loop, tail, done = (builder.append_basic_block(name) for name in ("tanh_loop", "tanh_tail", "tanh_done"))
        after_loop = builder.append_basic_block("tanh_rest")
        builder.cbranch(builder.icmp_signed(">", whole, ir.Constant(I64, 0)), loop, after_loop)
        builder.position_at_end(loop)
        u = builder.phi(I64)
        tanh_at(u, lambda ptr: load(builder, ptr, vec, 4), lambda value, ptr: store(builder, value, ptr, 4))
        u_next = builder.add(u, ir.Constant(I64, vec.count))
        u.add_incoming(ir.Constant(I64, 0), entry)
        u.add_incoming(u_next, loop)
        builder.cbranch(builder.icmp_signed("<", u_next, whole), loop, after_loop)
        builder.position_at_end(after_loop)
        rest = builder.sub(count_, whole)
        builder.cbranch(builder.icmp_signed(">", rest, ir.Constant(I64, 0)), tail, done)
        builder.position_at_end(tail)
        mask = builder.icmp_signed("<", ir.Constant(ir.VectorType(I64, vec.count), list(range(vec.count))),
                                   splat(builder, ir.VectorType(I64, vec.count), rest))
        tanh_at(whole, lambda ptr: masked_load(builder, ptr, vec, mask), lambda value, ptr: masked_store(
            builder, value, ptr, mask))
        builder.branch(done)
        builder.position_at_end(done)
        return count_
    return sig, codegen


# ----------------------------------------------------------------------------------------------- transpose
@intrinsic
def transpose_block(typingctx, dst, d0, dstride, src, s0, sstride):
    """``transpose_block(dst, d0, dstride, src, s0, sstride)``: dst[d0 + j*dstride + i] = src[s0 + i*sstride + j]
    for i, j < L, L the elements per vector (16 float32 with AVX-512): L vector loads, log2(L) rounds of L
    two-vector shuffles, L vector stores. dst and src are 1-D C-contiguous arrays of one float dtype; the
    caller keeps every index in bounds."""
    check_runs("transpose_block", dst, src)
    sig = types.void(dst, types.intp, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst_, src_ = (make_array(t)(context, builder, v) for t, v in ((signature.args[0], args[0]),
                                                                      (signature.args[3], args[3])))
        d0_, dstride_, s0_, sstride_ = args[1], args[2], args[4], args[5]
        itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)

        def at(array, start, stride, i):
            return builder.gep(array.data, [builder.add(start, builder.mul(stride, ir.Constant(I64, i)))])

        rows = [load(builder, at(src_, s0_, sstride_, i), vec, itemsize) for i in range(lanes)]
        half = lanes // 2
        masks = ir.VectorType(I32, lanes)
        while half:  # rows i and i + half swap their off-diagonal blocks of `half` elements
            low = ir.Constant(masks, [j if j & half == 0 else j - half + lanes for j in range(lanes)])
            high = ir.Constant(masks, [j + half if j & half == 0 else j + lanes for j in range(lanes)])
            for i in range(lanes):
                if i & half == 0:
                    first, second = rows[i], rows[i + half]
                    rows[i] = builder.shuffle_vector(first, second, low)
                    rows[i + half] = builder.shuffle_vector(first, second, high)
            half //= 2
        for j in range(lanes):
            store(builder, rows[j], at(dst_, d0_, dstride_, j), itemsize)
        return context.get_dummy_value()
    return sig, codegen


# ----------------------------------------------------------------------------------------------- 2x2 pool
@intrinsic
def pool_pairs(typingctx, dst, d0, src, s0, width, count):
    """``pool_pairs(dst, d0, src, s0, width, count)``: dst[d0 + j] = (((a[2j] + a[2j + 1]) + b[2j]) + b[2j + 1])
    / 4 for j < count, a the row of src at s0 and b the one at s0 + width: the 2x2 average pool of two rows, L
    outputs per step (their inputs' even and odd lanes shuffled apart), masked at the end (nothing past the
    2 * count inputs of a row is read). dst and src are 1-D C-contiguous arrays of one float dtype."""
    check_runs("pool_pairs", dst, src)
    sig = types.void(dst, types.intp, src, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _pool_ir(context, builder, signature, args, lambda value: value)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def tanh32_pool_pairs(typingctx, dst, d0, src, s0, width, count, bias, scale_out, scale_in):
    """``tanh32_pool_pairs(dst, d0, src, s0, width, count, bias, a, s)``: :func:`pool_pairs` of the two rows
    after a * tanh(s * (x + bias)) (:func:`tanh32_vectors`' arithmetic) on each of their elements, in
    registers: a conv's activation and pool in one pass over its output. Returns count, or 0 unless dst and src
    are 1-D C-contiguous float32 arrays (the caller then activates and pools in turn)."""
    vectorised = _is_float32_run(dst) and _is_float32_run(src)
    sig = types.intp(dst, types.intp, src, types.intp, types.intp, types.intp, types.float32, types.float32,
                     types.float32)

    def codegen(context, builder, signature, args):
        if not vectorised:
            return ir.Constant(I64, 0)
        vec = ir.VectorType(ir.FloatType(), VECTOR_BYTES // 4)
        _pool_ir(context, builder, signature, args, lambda value: _scaled_tanh_ir(builder, vec, value, args[6:9]))
        return args[5]
    return sig, codegen


def _pool_ir(context, builder, signature, args, transform) -> None:
    """The loop of :func:`pool_pairs` (its first six arguments), each loaded input vector mapped by
    ``transform`` (an IR function of a vector) before the sums."""
    dst_, src_ = _run_arrays(context, builder, signature, args)
    d0_, s0_, width_, count_ = args[1], args[3], args[4], args[5]
    itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)
    ivec = ir.VectorType(I64, lanes)
    evens = ir.Constant(ir.VectorType(I32, lanes), list(range(0, 2 * lanes, 2)))
    odds = ir.Constant(ir.VectorType(I32, lanes), list(range(1, 2 * lanes, 2)))
    quarter = ir.Constant(vec, [0.25] * lanes)
    step = ir.Constant(I64, lanes)
    index = ir.Constant(ivec, list(range(lanes)))

    def row_sum(start, low, high):  # (even + odd) lanes of 2 * lanes inputs from start
        first = transform(masked_load(builder, builder.gep(src_.data, [start]), vec, low))
        second = transform(masked_load(builder, builder.gep(src_.data, [builder.add(start, step)]), vec, high))
        return (builder.shuffle_vector(first, second, evens), builder.shuffle_vector(first, second, odds))

    def pool_step(j):
        rest = builder.sub(count_, j)  # outputs left: a full vector when >= lanes, else masked
        inputs = builder.mul(rest, ir.Constant(I64, 2))
        low = builder.icmp_signed("<", index, splat(builder, ivec, inputs))
        high = builder.icmp_signed("<", index, splat(builder, ivec, builder.sub(inputs, step)))
        out_mask = builder.icmp_signed("<", index, splat(builder, ivec, rest))
        a0 = builder.add(s0_, builder.mul(j, ir.Constant(I64, 2)))
        ea, oa = row_sum(a0, low, high)
        eb, ob = row_sum(builder.add(a0, width_), low, high)
        total = builder.fadd(builder.fadd(builder.fadd(ea, oa), eb), ob)
        masked_store(builder, builder.fmul(total, quarter), builder.gep(dst_.data, [builder.add(d0_, j)]),
                     out_mask)

    vector_loop(builder, count_, lanes, "pool", pool_step)


# ----------------------------------------------------------------------------------------------- padded copy
@intrinsic
def copy_padded(typingctx, dst, d0, src, s0, count, total):
    """``copy_padded(dst, d0, src, s0, count, total)``: dst[d0 + j] = src[s0 + j] for j < count and 0 for count <=
    j < total (count <= total): a short image row and its zero margin in one pass of masked vectors (no loop
    remainders; nothing past count is read, nothing past total written). dst and src are 1-D C-contiguous arrays
    of one float dtype."""
    check_runs("copy_padded", dst, src)
    sig = types.void(dst, types.intp, src, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst_, src_ = _run_arrays(context, builder, signature, args)
        d0_, s0_, count_, total_ = args[1], args[3], args[4], args[5]
        itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)
        ivec = ir.VectorType(I64, lanes)
        index = ir.Constant(ivec, list(range(lanes)))

        def copy_step(j):
            lane_at = builder.add(index, splat(builder, ivec, j))
            read = builder.icmp_signed("<", lane_at, splat(builder, ivec, count_))
            write = builder.icmp_signed("<", lane_at, splat(builder, ivec, total_))
            value = masked_load(builder, builder.gep(src_.data, [builder.add(s0_, j)]), vec, read)
            masked_store(builder, value, builder.gep(dst_.data, [builder.add(d0_, j)]), write)

        vector_loop(builder, total_, lanes, "pad", copy_step)
        return context.get_dummy_value()
    return sig, codegen
