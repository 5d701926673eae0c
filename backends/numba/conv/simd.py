"""The register tiles of the conv matmul, Numba: c[i0:i0+rows, j0:j0+cols] += the rows of ``a`` (shifted, as in
:func:`_loops.gemm`) times the shifted rows of ``b``, the rows x cols accumulators held in vector registers
through the whole reduction.

LLVM's loop vectorizer cannot keep a matmul's accumulators in registers across the reduction (they stay in
memory: a load and a store of c per few FMAs) and picks 256-bit vectors on AVX-512 machines. So each tile is a
Numba intrinsic that writes the LLVM IR itself: explicit vectors as wide as the machine's (64 bytes with
AVX-512, else 32; LLVM splits them where the machine's are narrower), the accumulators as SSA values, and each
reduction step one load per b vector, one broadcast per a row and rows x vectors FMAs. The summation order is
fixed (q ascending, an FMA per step, then added to c): results do not depend on the thread count.

Variants: gather tiles read a's element at a per-row plus a per-step offset (the planar path: input planes read in
place), line tiles the same with rows in lines of consecutive elements (one address per line), slide tiles line
tiles whose steps are whole kernel rows (each window element loaded once for all the taps that read it); dot
tiles hold a block of long dot products (the weight gradients'), vectorised along the reduction and summed across
lanes last.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array

from ..vectors import VECTOR_BYTES, load, masked_load, splat, store, vector_function, vector_type

TALL = 8 if VECTOR_BYTES == 64 else 4   # rows of a full tile: TALL x WIDE accumulators, WIDE B vectors and a
SHORT = TALL // 2                       # broadcast fit the 32 (16) vector registers; SHORT: the rows left over
SIX = 6                                 # ... or, with AVX-512, six of them (LeNet-5's 6 channels) in one tile
WIDE, NARROW = 3, 1                     # vectors per tile row: full tiles, then the columns left over
# The channels path's tiles (rows = output positions, vectors = output channels): (rows, vectors) of the wide
# tile and of the narrow one for the channels left over, and a multiple of both tiles' rows.
CHANNEL_TILES = ((6, 4), (12, 2)) if VECTOR_BYTES == 64 else ((2, 4), (6, 2))
CHANNEL_ROWS = 12
# The planar path's gather tiles (rows = output positions or taps, one vector of output channels): the wide one's
# rows, and the narrow one's for the rows left over; and the rows of its line tile, lines of LINE consecutive
# elements of a (five output positions along a row, or five taps along a kernel row): one address per line.
PLANAR_TILES = ((24, 1), (8, 1)) if VECTOR_BYTES == 64 else ((12, 1), (4, 1))
LINE = 5
LINE_ROWS = 5 * LINE if VECTOR_BYTES == 64 else 2 * LINE
# The weight gradients' blocks of long dot products: (output channels, taps), rows x cols accumulators beside
# cols b vectors and one a vector.
DOT_TILE = (6, 4) if VECTOR_BYTES == 64 else (3, 3)


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
        return _signature(c, a, arow, aoff, b, brow, boff), _codegen(rows, vectors, False)
    tile.__name__ = tile.__qualname__ = f"fma_tile_{rows}x{vectors}"
    return intrinsic(tile)


def _gather_tile(rows: int, vectors: int, line: int = 1):
    """The tile of ``rows`` x ``vectors`` whose ``a`` elements are gathered along the reduction:

    ``tile(c, a, arow, aoff, aq, b, brow, boff, i0, j0, q0, q1)``: as :func:`_tile` with a[arow[i0 + i],
    aoff[i0 + i] + aq[q]] for a[arow[i0 + i], aoff[i0 + i] + q] (a conv's input planes read in place: aoff an
    output position's offset, aq a tap's). With ``line`` > 1 the caller promises that each run of ``line``
    rows from i0 on reads consecutive elements (row i at the address of row i - i % line, plus i % line): the
    tile then holds one address per line (24 row addresses would not fit the registers beside 24 accumulators;
    reloading them costs a load per FMA)."""

    def tile(typingctx, c, a, arow, aoff, aq, b, brow, boff, i0, j0, q0, q1):
        return _gather_signature(c, a, arow, aoff, aq, b, brow, boff), _codegen(rows, vectors, True, line)
    tile.__name__ = tile.__qualname__ = f"fma_gather_tile_{rows}x{vectors}_{line}"
    return intrinsic(tile)


def _gather_signature(c, a, arow, aoff, aq, b, brow, boff):
    """The signature of a gather (or slide) tile: :func:`_signature`'s with the int64 offsets aq after aoff."""
    sig = _signature(c, a, arow, aoff, b, brow, boff)
    if aq != types.Array(types.int64, 1, "C"):
        raise numba.core.errors.TypingError("the gather and slide tiles need an int64 C-contiguous aq")
    return types.void(*sig.args[:4], aq, *sig.args[4:])


def _signature(c, a, arow, aoff, b, brow, boff):
    index = types.Array(types.int64, 1, "C")
    if not all(x == index for x in (arow, aoff, brow, boff)) or not _tileable(a, b, c):
        raise numba.core.errors.TypingError("fma_tile needs 2-D C-contiguous a, b, c of one float dtype and "
                                            "int64 C-contiguous row and offset vectors")
    return types.void(c, a, arow, aoff, b, brow, boff, types.intp, types.intp, types.intp, types.intp)


def _codegen(rows: int, vectors: int, gather: bool, line: int = 1):
    """The LLVM IR of a tile: rows x vectors accumulators as loop phis, stored (added to c) after the loop."""
    def codegen(context, builder, signature, args):
        arrays = [make_array(t)(context, builder, v) for t, v in zip(signature.args, args)
                  if isinstance(t, types.Array)]
        if gather:
            c_, a_, arow_, aoff_, aq_, b_, brow_, boff_ = arrays
        else:
            c_, a_, arow_, aoff_, b_, brow_, boff_ = arrays
        i0_, j0_, q0_, q1_ = args[-4:]
        itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)
        i64 = ir.IntType(64)
        fma = vector_function(builder, vec, "fma", 3)
        lda, ldb, ldc = (_row_stride(builder, x, itemsize) for x in (a_, b_, c_))
        a_rows = []
        for i in range(rows):
            if i % line:  # rows i - i % line ... i are consecutive elements of a
                a_rows.append(builder.gep(a_rows[-1], [ir.Constant(i64, 1)]))
            else:
                a_rows.append(_row_address(builder, a_, arow_, aoff_, lda, builder.add(i0_, ir.Constant(i64, i))))

        def step(q, acc):
            b_start = _b_start(builder, brow_, boff_, ldb, j0_, q)
            b_vecs = [load(builder, builder.gep(b_.data, [builder.add(b_start, ir.Constant(i64, v * lanes))]),
                           vec, itemsize) for v in range(vectors)]
            summed = []
            at = builder.load(builder.gep(aq_.data, [q])) if gather else q
            for i in range(rows):
                spread = splat(builder, vec, builder.load(builder.gep(a_rows[i], [at])))
                summed += [builder.call(fma, [spread, b_vecs[v], acc[i * vectors + v]]) for v in range(vectors)]
            return summed
        summed = _reduction_loop(builder, "tile", q0_, q1_, 1, rows * vectors, vec, step)
        _add_to_c(builder, c_, ldc, i0_, j0_, summed, rows, vectors, vec, itemsize)
        return context.get_dummy_value()
    return codegen


def _row_address(builder, a_, arow_, aoff_, lda, row):
    """A pointer to a[arow[row], aoff[row]]."""
    start = builder.add(builder.mul(builder.load(builder.gep(arow_.data, [row])), lda),
                        builder.load(builder.gep(aoff_.data, [row])))
    return builder.gep(a_.data, [start])


def _b_start(builder, brow_, boff_, ldb, j0_, q):
    """The flat index of b[brow[q], boff[q] + j0]."""
    return builder.add(builder.add(builder.mul(builder.load(builder.gep(brow_.data, [q])), ldb),
                                   builder.load(builder.gep(boff_.data, [q]))), j0_)


def _reduction_loop(builder, name: str, q0_, q1_, stride: int, count: int, vec, step):
    """A tile's reduction loop from q0 to q1 by ``stride``: ``count`` accumulator vectors as phis, zero on entry,
    ``step(q, acc)`` building one step's IR and returning the updated accumulators; returns their final values,
    the builder then after the loop."""
    i64 = ir.IntType(64)
    entry = builder.block
    loop, done = builder.append_basic_block(f"{name}_loop"), builder.append_basic_block(f"{name}_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    q = builder.phi(i64)
    acc = [builder.phi(vec) for _ in range(count)]
    summed = step(q, acc)
    q_next = builder.add(q, ir.Constant(i64, stride))
    q.add_incoming(q0_, entry)
    q.add_incoming(q_next, loop)
    for phi, value in zip(acc, summed):
        phi.add_incoming(ir.Constant(vec, [0.0] * vec.count), entry)
        phi.add_incoming(value, loop)
    builder.cbranch(builder.icmp_signed("<", q_next, q1_), loop, done)
    builder.position_at_end(done)
    return summed


def _add_to_c(builder, c_, ldc, i0_, j0_, summed, rows: int, vectors: int, vec, itemsize: int) -> None:
    """c[i0 + i, j0 + v * lanes ...] += summed[i * vectors + v], a vector each."""
    i64 = ir.IntType(64)
    for i in range(rows):
        row = builder.add(builder.mul(builder.add(i0_, ir.Constant(i64, i)), ldc), j0_)
        for v in range(vectors):
            ptr = builder.gep(c_.data, [builder.add(row, ir.Constant(i64, v * vec.count))])
            store(builder, builder.fadd(load(builder, ptr, vec, itemsize), summed[i * vectors + v]), ptr, itemsize)


def _slide_tile(rows: int, line: int):
    """The line tile (rows in lines of ``line`` consecutive output positions, one vector of output channels) for
    taps that also come in runs of ``line`` consecutive window elements (a kernel row ``line`` wide, unit
    dilation: aq[q + s] = aq[q] + s for s < line, from every q0 + a multiple of line):

    ``tile(c, a, arow, aoff, aq, b, brow, boff, i0, j0, q0, q1)``: the gather tile's sum, one kernel row per
    step. Each window element a line's outputs read along the kernel row is loaded once and multiplied by up to
    ``line`` weight vectors (held in registers through the step), where the line tile loads one element per
    FMA. Output i still takes its taps in order (s ascending within a row, q ascending): the same FMAs in the
    same order as the line tile, so the same results."""

    def tile(typingctx, c, a, arow, aoff, aq, b, brow, boff, i0, j0, q0, q1):
        return _gather_signature(c, a, arow, aoff, aq, b, brow, boff), _slide_codegen(rows, line)
    tile.__name__ = tile.__qualname__ = f"fma_slide_tile_{rows}_{line}"
    return intrinsic(tile)


def _slide_codegen(rows: int, line: int):
    """The LLVM IR of a slide tile: one accumulator per row as loop phis, stored (added to c) after the loop."""
    def codegen(context, builder, signature, args):
        c_, a_, arow_, aoff_, aq_, b_, brow_, boff_ = (make_array(t)(context, builder, v) for t, v in
                                                       zip(signature.args, args) if isinstance(t, types.Array))
        i0_, j0_, q0_, q1_ = args[-4:]
        itemsize, _, vec = vector_type(context, signature.args[0].dtype)
        i64 = ir.IntType(64)
        fma = vector_function(builder, vec, "fma", 3)
        lda, ldb, ldc = (_row_stride(builder, x, itemsize) for x in (a_, b_, c_))
        line_starts = [_row_address(builder, a_, arow_, aoff_, lda, builder.add(i0_, ir.Constant(i64, first)))
                       for first in range(0, rows, line)]

        def step(q, acc):
            weights = [load(builder, builder.gep(b_.data, [_b_start(builder, brow_, boff_, ldb, j0_, builder.add(
                q, ir.Constant(i64, s)))]), vec, itemsize) for s in range(line)]
            at = builder.load(builder.gep(aq_.data, [q]))
            summed = list(acc)
            for first, base in zip(range(0, rows, line), line_starts):
                for j in range(2 * line - 1):  # the window elements of the line's kernel rows, each loaded once
                    spread = splat(builder, vec, builder.load(builder.gep(base, [builder.add(
                        at, ir.Constant(i64, j))])))
                    for s in range(max(0, j - line + 1), min(line, j + 1)):  # output j - s takes tap s from it
                        i = first + j - s
                        summed[i] = builder.call(fma, [spread, weights[s], summed[i]])
            return summed
        summed = _reduction_loop(builder, "slide", q0_, q1_, line, rows, vec, step)
        _add_to_c(builder, c_, ldc, i0_, j0_, summed, rows, 1, vec, itemsize)
        return context.get_dummy_value()
    return codegen


def _dot_tile(rows: int, cols: int):
    """The block of ``rows`` x ``cols`` long dot products (the weight gradients' (output channel, tap) pairs):

    ``tile(c, ci, cj, a, astart, b, bstart, count)``: c[ci + i, cj + j] += sum over u < count of
    a.flat[astart[i] + u] * b.flat[bstart[j] + u] for i < rows, j < cols; a, b and c 2-D C-contiguous arrays of
    one float dtype, the caller keeping every index in bounds. One vector accumulator per pair over whole vectors
    of u, then one masked vector for the rest (nothing past count is read), each summed across its lanes in a
    fixed halving order: results do not depend on the thread count."""

    def tile(typingctx, c, ci, cj, a, astart, b, bstart, count):
        index = types.Array(types.int64, 1, "C")
        if astart != index or bstart != index or not _tileable(a, b, c):
            raise numba.core.errors.TypingError("dot_tile needs 2-D C-contiguous a, b, c of one float dtype and "
                                                "int64 C-contiguous start vectors")
        return types.void(c, types.intp, types.intp, a, astart, b, bstart, types.intp), _dot_codegen(rows, cols)
    tile.__name__ = tile.__qualname__ = f"dot_tile_{rows}x{cols}"
    return intrinsic(tile)


def _dot_codegen(rows: int, cols: int):
    """The LLVM IR of a dot tile: rows x cols accumulators as loop phis, a masked last step, then the sums."""
    def codegen(context, builder, signature, args):
        c_, a_, astart_, b_, bstart_ = (make_array(signature.args[k])(context, builder, args[k])
                                        for k in (0, 3, 4, 5, 6))
        ci_, cj_, count_ = args[1], args[2], args[7]
        itemsize, lanes, vec = vector_type(context, signature.args[0].dtype)
        i64 = ir.IntType(64)
        fma = vector_function(builder, vec, "fma", 3)
        a_rows = [builder.gep(a_.data, [builder.load(builder.gep(astart_.data, [ir.Constant(i64, i)]))])
                  for i in range(rows)]
        b_rows = [builder.gep(b_.data, [builder.load(builder.gep(bstart_.data, [ir.Constant(i64, j)]))])
                  for j in range(cols)]
        zero = ir.Constant(vec, [0.0] * lanes)
        whole = builder.mul(builder.sdiv(count_, ir.Constant(i64, lanes)), ir.Constant(i64, lanes))
        entry = builder.block
        loop, after = builder.append_basic_block("dot_loop"), builder.append_basic_block("dot_rest")
        builder.cbranch(builder.icmp_signed(">", whole, ir.Constant(i64, 0)), loop, after)

        def step(acc, u, read):
            bv = [read(builder.gep(b_rows[j], [u])) for j in range(cols)]
            out = []
            for i in range(rows):
                av = read(builder.gep(a_rows[i], [u]))
                out += [builder.call(fma, [av, bv[j], acc[i * cols + j]]) for j in range(cols)]
            return out

        builder.position_at_end(loop)
        u = builder.phi(i64)
        acc = [builder.phi(vec) for _ in range(rows * cols)]
        summed = step(acc, u, lambda ptr: load(builder, ptr, vec, itemsize))
        u_next = builder.add(u, ir.Constant(i64, lanes))
        u.add_incoming(ir.Constant(i64, 0), entry)
        u.add_incoming(u_next, loop)
        for phi, value in zip(acc, summed):
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", u_next, whole), loop, after)
        builder.position_at_end(after)
        looped = [builder.phi(vec) for _ in range(rows * cols)]
        for phi, value in zip(looped, summed):
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
        mask = builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, lanes), list(range(lanes))),
                                   splat(builder, ir.VectorType(i64, lanes), builder.sub(count_, whole)))
        final = step(looped, whole, lambda ptr: masked_load(builder, ptr, vec, mask))  # an all-false mask reads 0
        ldc = _row_stride(builder, c_, itemsize)
        for i in range(rows):
            row = builder.mul(builder.add(ci_, ir.Constant(i64, i)), ldc)
            for j in range(cols):
                total, width = final[i * cols + j], lanes
                while width > 1:  # lanes [0, w/2) + [w/2, w), then the halves of that
                    width //= 2
                    low = builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                                           list(range(width))))
                    high = builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                                            list(range(width, 2 * width))))
                    total = builder.fadd(low, high)
                ptr = builder.gep(c_.data, [builder.add(row, builder.add(cj_, ir.Constant(i64, j)))])
                builder.store(builder.fadd(builder.load(ptr), builder.extract_element(total, ir.Constant(
                    ir.IntType(32), 0))), ptr)
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
fma_gather_tile = _gather_tile(*PLANAR_TILES[0])
fma_gather_tile_narrow = _gather_tile(*PLANAR_TILES[1])
fma_line_tile = _gather_tile(LINE_ROWS, 1, LINE)
fma_slide_tile = _slide_tile(LINE_ROWS, LINE)
dot_tile = _dot_tile(*DOT_TILE)
