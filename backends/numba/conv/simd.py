"""The register tiles of the conv matmul, Numba: c[i0:i0+rows, j0:j0+cols] += the rows of ``a`` (shifted, as in
:func:`_loops.gemm`) times the shifted rows of ``b``, the rows x cols accumulators held in vector registers
through the whole reduction.

LLVM's loop vectorizer cannot keep a matmul's accumulators in registers across the reduction (they stay in
memory: a load and a store of c per few FMAs) and picks 256-bit vectors on AVX-512 machines. So each tile is a
Numba intrinsic that writes the LLVM IR itself: explicit vectors as wide as the machine's (64 bytes with
AVX-512, else 32; LLVM splits them where the machine's are narrower), the accumulators as SSA values, and each
reduction step one load per b vector, one broadcast per a row and rows x vectors FMAs. The summation order is
fixed (q ascending, an FMA per step, then added to c): results do not depend on the thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array

from ..vectors import VECTOR_BYTES, load, store

TALL = 8 if VECTOR_BYTES == 64 else 4   # rows of a full tile: TALL x WIDE accumulators, WIDE B vectors and a
SHORT = TALL // 2                       # broadcast fit the 32 (16) vector registers; SHORT: the rows left over
SIX = 6                                 # ... or, with AVX-512, six of them (LeNet-5's 6 channels) in one tile
WIDE, NARROW = 3, 1                     # vectors per tile row: full tiles, then the columns left over
# The channels path's tiles (rows = output positions, vectors = output channels): (rows, vectors) of the wide
# tile and of the narrow one for the channels left over, and a multiple of both tiles' rows.
CHANNEL_TILES = ((6, 4), (12, 2)) if VECTOR_BYTES == 64 else ((2, 4), (6, 2))
CHANNEL_ROWS = 12


def lanes(c):
    """Elements of ``c``'s dtype per vector, a compile-time constant inside Numba code."""
    return VECTOR_BYTES // c.dtype.itemsize


@overload(lanes)
def _lanes(c):
    count = VECTOR_BYTES // np.dtype(c.dtype.name).itemsize
    return lambda c: count


def tile_fits(a, b, c) -> bool:
    """Whether the tile can run on these arrays: C-contiguous, 2-D and of one float dtype (compile-time)."""
    return False


def _tileable(a, b, c) -> bool:
    """The Numba types of a, b, c are 2-D C-contiguous arrays of one float dtype."""
    return all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" and x.dtype == c.dtype
               for x in (a, b, c)) and c.dtype in (types.float32, types.float64)


@overload(tile_fits)
def _tile_fits(a, b, c):
    fits = _tileable(a, b, c)
    return lambda a, b, c: fits


def _row_stride(builder, array, itemsize: int):
    """The element stride between rows of a 2-D C-contiguous array struct."""
    return builder.sdiv(builder.extract_value(array.strides, 0), ir.Constant(ir.IntType(64), itemsize))


def _tile(rows: int, vectors: int):
    """The tile intrinsic of ``rows`` rows by ``vectors`` vectors:

    ``tile(c, a, arow, aoff, b, brow, boff, i0, j0, q0, q1)``: c[i0 + i, j0 + j] += sum over q0 <= q < q1 of
    a[arow[i0 + i], aoff[i0 + i] + q] * b[brow[q], boff[q] + j0 + j] for i < rows, j < vectors * lanes(c);
    needs q1 > q0 and arrays for which tile_fits holds."""

    def tile(typingctx, c, a, arow, aoff, b, brow, boff, i0, j0, q0, q1):
        return _signature(c, a, arow, aoff, b, brow, boff), _codegen(rows, vectors)
    tile.__name__ = tile.__qualname__ = f"fma_tile_{rows}x{vectors}"
    return intrinsic(tile)


def _signature(c, a, arow, aoff, b, brow, boff):
    index = types.Array(types.int64, 1, "C")
    if not all(x == index for x in (arow, aoff, brow, boff)) or not _tileable(a, b, c):
        raise numba.core.errors.TypingError("fma_tile needs 2-D C-contiguous a, b, c of one float dtype and "
                                            "int64 C-contiguous row and offset vectors")
    return types.void(c, a, arow, aoff, b, brow, boff, types.intp, types.intp, types.intp, types.intp)


def _codegen(rows: int, vectors: int):
    """The LLVM IR of a tile: rows x vectors accumulators as loop phis, stored (added to c) after the loop."""
    def codegen(context, builder, signature, args):
        c_, a_, arow_, aoff_, b_, brow_, boff_ = (make_array(t)(context, builder, v)
                                                   for t, v in zip(signature.args[:7], args[:7]))
        i0_, j0_, q0_, q1_ = args[7:]
        itemsize = np.dtype(signature.args[0].dtype.name).itemsize
        lanes = VECTOR_BYTES // itemsize
        vec = ir.VectorType(context.get_value_type(signature.args[0].dtype), lanes)
        i64 = ir.IntType(64)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.v{lanes}f{8 * itemsize}")
        lda, ldb, ldc = (_row_stride(builder, x, itemsize) for x in (a_, b_, c_))
        a_rows = []
        for i in range(rows):
            row = builder.add(i0_, ir.Constant(i64, i))
            start = builder.add(builder.mul(builder.load(builder.gep(arow_.data, [row])), lda),
                                builder.load(builder.gep(aoff_.data, [row])))
            a_rows.append(builder.gep(a_.data, [start]))
        entry = builder.block
        loop, done = builder.append_basic_block("tile_loop"), builder.append_basic_block("tile_done")
        builder.branch(loop)
        builder.position_at_end(loop)
        q = builder.phi(i64)
        acc = [builder.phi(vec) for _ in range(rows * vectors)]
        b_start = builder.add(builder.add(builder.mul(builder.load(builder.gep(brow_.data, [q])), ldb),
                                          builder.load(builder.gep(boff_.data, [q]))), j0_)
        b_vecs = [load(builder, builder.gep(b_.data, [builder.add(b_start, ir.Constant(i64, v * lanes))]), vec,
                        itemsize) for v in range(vectors)]
        summed = []
        for i in range(rows):
            scalar = builder.load(builder.gep(a_rows[i], [q]))
            spread = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), scalar,
                                                                   ir.Constant(ir.IntType(32), 0)),
                                            ir.Constant(vec, ir.Undefined),
                                            ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
            summed += [builder.call(fma, [spread, b_vecs[v], acc[i * vectors + v]]) for v in range(vectors)]
        q_next = builder.add(q, ir.Constant(i64, 1))
        q.add_incoming(q0_, entry)
        q.add_incoming(q_next, loop)
        for phi, value in zip(acc, summed):
            phi.add_incoming(ir.Constant(vec, [0.0] * lanes), entry)
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", q_next, q1_), loop, done)
        builder.position_at_end(done)
        for i in range(rows):
            row = builder.add(builder.mul(builder.add(i0_, ir.Constant(i64, i)), ldc), j0_)
            for v in range(vectors):
                ptr = builder.gep(c_.data, [builder.add(row, ir.Constant(i64, v * lanes))])
                old = load(builder, ptr, vec, itemsize)
                store(builder, builder.fadd(old, summed[i * vectors + v]), ptr, itemsize)
        return context.get_dummy_value()
    return codegen


fma_tile = _tile(TALL, WIDE)
fma_tile_short = _tile(SHORT, WIDE)
fma_tile_narrow = _tile(TALL, NARROW)
fma_tile_short_narrow = _tile(SHORT, NARROW)
fma_tile_six = _tile(SIX, WIDE)
fma_tile_six_narrow = _tile(SIX, NARROW)
fma_tile_channels = _tile(*CHANNEL_TILES[0])
fma_tile_channels_narrow = _tile(*CHANNEL_TILES[1])
