"""The machine's measured float32 FMA peak: independent vector FMAs in a loop, compiled by LLVM (llvmlite, which
numba brings) for this CPU's widest vectors, run on every thread at once.

A GEMM library reaches some fraction of this; so does every cnnkit kernel, which is why the bench reports its
rates against it. The loop keeps ACCUMULATORS vector chains in flight, more than FMA units times FMA latency on
current x86 and Arm cores, so the chains' latency does not bound it.
"""
from __future__ import annotations

import ctypes
import threading
import time

ACCUMULATORS = 10
ITERATIONS = 2_000_000
"""Loop trips per thread and run: 10 x 16-lane FMAs each, about 20 ms on one AVX-512 core."""


def vector_lanes(features: str) -> int:
    """float32 lanes of the widest vector the LLVM feature string ``features`` (e.g. '+avx2,-avx512f') allows."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if "avx512f" in enabled:
        return 16
    if "avx" in enabled:
        return 8
    return 4


def _module_ir(lanes: int) -> str:
    """LLVM IR of ``void fma_loop(i64 n, float* out)``: n trips of ACCUMULATORS independent vector FMAs, the sum
    stored to out[0] so nothing is optimised away."""
    from llvmlite import ir

    f32, vec = ir.FloatType(), ir.VectorType(ir.FloatType(), lanes)
    module = ir.Module(name="cnnkit_fma_peak")
    fma = ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), name=f"llvm.fma.v{lanes}f32")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(64), f32.as_pointer()]), name="fma_loop")
    n, out = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    scale, shift = ir.Constant(vec, [0.999] * lanes), ir.Constant(vec, [0.001] * lanes)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(ir.IntType(64))
    accs = [b.phi(vec) for _ in range(ACCUMULATORS)]
    nexts = [b.call(fma, [acc, scale, shift]) for acc in accs]
    i_next = b.add(i, ir.Constant(ir.IntType(64), 1))
    i.add_incoming(ir.Constant(ir.IntType(64), 0), entry)
    i.add_incoming(i_next, loop)
    for k, (acc, nxt) in enumerate(zip(accs, nexts)):
        acc.add_incoming(ir.Constant(vec, [float(k)] * lanes), entry)
        acc.add_incoming(nxt, loop)
    b.cbranch(b.icmp_unsigned("<", i_next, n), loop, done)
    b.position_at_end(done)
    total = nexts[0]
    for nxt in nexts[1:]:
        total = b.fadd(total, nxt)
    b.store(b.extract_element(total, ir.Constant(ir.IntType(32), 0)), out)
    b.ret_void()
    return str(module)


def _compiled_loop() -> tuple[object, ctypes._CFuncPtr, int]:
    """(engine, fma_loop as a ctypes function, lanes), compiled for this CPU; keep the engine alive while calling."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features().flatten()
    lanes = vector_lanes(features)
    target = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=features, opt=2)
    module = llvm.parse_assembly(_module_ir(lanes))
    module.verify()
    engine = llvm.create_mcjit_compiler(module, target)
    engine.finalize_object()
    loop = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.POINTER(ctypes.c_float))(
        engine.get_function_address("fma_loop"))
    return engine, loop, lanes


def fma_peak_gflops(threads: int, repeats: int = 5) -> float | None:
    """Best float32 GFLOP/s of ``threads`` threads running the FMA loop at once (ctypes releases the GIL), over
    ``repeats`` runs; None when llvmlite is not installed."""
    try:
        engine, loop, lanes = _compiled_loop()
    except ImportError:
        return None
    sinks = [ctypes.c_float() for _ in range(threads)]
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=loop, args=(ITERATIONS, ctypes.byref(s))) for s in sinks]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    del engine
    return 2.0 * lanes * ACCUMULATORS * ITERATIONS * threads / best / 1e9
