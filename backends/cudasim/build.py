"""From a kernel file to a loadable CPU library: source preparation, kernel signatures, g++ and the disk cache.

The source is the CuPy loader's (``cupy._module.source``: common.cuh pasted in), with ``#line`` markers so that
compiler messages and gdb point at the original ``.cu`` files, and two rewrites, line for line:

* ``__shared__ T name[..];`` -> ``auto& name = ::cudasim::shared_var<T[..], ID>();`` (one arena block per
  declaration, refilled with 0xFF before every block; a heap block, so AddressSanitizer puts redzones round it);
* ``extern __shared__ T name[];`` -> ``T* name = ::cudasim::dynamic_shared<T>();`` (the launch's buffer).

Each ``extern "C" __global__`` kernel gets an exported trampoline ``cudasim_launch_<name>`` that unpacks an
argument array by the kernel's real C parameter types and hands the call to the shim's thread pool. The
library is cached on disk under a hash of the prepared source, the shim, the compiler and its flags.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHIM = Path(__file__).with_name("cudasim.h")
FLAGS = ("-std=c++20", "-O2", "-g", "-fPIC", "-shared", "-pthread", "-Wall", "-Werror", "-Wno-unused-function",
         "-fno-gnu-unique", "-fvisibility=hidden", "-ffp-contract=off")
"""-fno-gnu-unique and hidden visibility keep every module's statics its own (a template's static local would
otherwise be one STB_GNU_UNIQUE symbol across all loaded modules); -ffp-contract=off: no fused multiply-add
unless the kernel writes fmaf (nvcc contracts a * b + c by default, so results may differ in the last bits)."""
SANITIZE_FLAGS = {
    "": (),
    "address": ("-fsanitize=address", "-fno-omit-frame-pointer"),
    "thread": ("-fsanitize=thread",),
}
"""CNNKIT_CUDASIM_SANITIZE values: the stand-ins for compute-sanitizer memcheck (address) and racecheck (thread)."""
DEBUG_FLAGS = ("-O0", "-g3")
"""CNNKIT_CUDASIM_DEBUG=1: no optimisation, so gdb steps line by line through a kernel."""

POINTEE_DTYPES = {
    "float": "float32", "double": "float64", "int": "int32", "unsigned int": "uint32", "long long": "int64",
    "unsigned long long": "uint64", "short": "int16", "unsigned short": "uint16", "signed char": "int8",
    "unsigned char": "uint8", "bool": "bool",
}
"""C type -> NumPy dtype name, for pointer targets and for scalar arguments alike."""

_SHARED = re.compile(r"__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w:]*(?:\s+[A-Za-z_]\w*)*?)\s+"
                     r"([A-Za-z_]\w*)\s*((?:\[[^\]\n]+\])*)\s*;")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w\s]*?)\s+"
                            r"([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\(([^)]*)\)\s*)?'
                     r"([A-Za-z_]\w*)\s*\(([^)]*)\)")


class CompileError(RuntimeError):
    """g++ refused a kernel file; the message is the compiler's, with the .cu file and line."""


@dataclass(frozen=True)
class Param:
    ctype: str  # "int", "float", or a pointer such as "const float*"
    name: str

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def dtype(self) -> str:
        """NumPy dtype name of the value (scalars) or of the pointed-to elements (pointers)."""
        base = self.ctype.rstrip("*").replace("const", "").strip()
        if base not in POINTEE_DTYPES:
            raise CompileError(f"kernel parameter {self.name!r} has C type {self.ctype!r}, which the simulator "
                               f"cannot pass yet (known: {', '.join(POINTEE_DTYPES)})")
        return POINTEE_DTYPES[base]


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[Param, ...]
    max_threads: int | None  # from __launch_bounds__


def prepare(text: str) -> str:
    """The source with ``__shared__`` declarations rewritten for the shim (same lines, same line numbers)."""
    text = _EXTERN_SHARED.sub(lambda m: f"{m[1]}* {m[2]} = ::cudasim::dynamic_shared<{m[1]}>();", text)
    counter = iter(range(1 << 30))
    return _SHARED.sub(lambda m: f"auto& {m[2]} = ::cudasim::shared_var<{m[1]}{m[3]}, {next(counter)}>();", text)


def _param(text: str) -> Param:
    text = " ".join(text.replace("__restrict__", " ").replace("*", " * ").split())
    *type_words, name = text.split()
    ctype = " ".join(type_words).replace(" *", "*")
    if not ctype.endswith("*"):  # a top-level const on a scalar does not change how it is passed
        ctype = ctype.replace("const ", "")
    return Param(ctype, name)


def _bound(kernel: str, bounds: str) -> int:
    first = bounds.split(",")[0].strip().strip("()").strip()
    if not first.isdigit():
        raise CompileError(f"kernel {kernel}: __launch_bounds__({bounds}) is not a plain thread count after -E")
    return int(first)


def signatures(text: str, compiler: str) -> dict[str, Signature]:
    """Every ``extern "C" __global__`` kernel of ``text`` (macros such as CONV_PARAMS expanded by g++ -E)."""
    result = subprocess.run([compiler, "-E", "-P", "-x", "c++", "-"], input=text, capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        raise CompileError(f"{compiler} -E failed:\n{result.stderr}")
    kernels = {}
    for bounds, name, params in _KERNEL.findall(result.stdout):
        plist = tuple(_param(p) for p in params.split(",") if p.strip())
        for p in plist:
            p.dtype  # noqa: B018 (refuses a type the launcher could not pass)
        max_threads = _bound(name, bounds) if bounds.strip() else None
        kernels[name] = Signature(name, plist, max_threads)
    return kernels


def _trampolines(kernels: dict[str, Signature]) -> str:
    lines = ['#line 1 "<cudasim trampolines>"']
    for sig in kernels.values():
        args = ", ".join(f"*static_cast<{p.ctype}*>(a[{i}])" for i, p in enumerate(sig.params))
        lines.append(f'extern "C" __attribute__((visibility("default"))) int cudasim_launch_{sig.name}('
                     f"const unsigned int* dims, unsigned long long shared, void** a, char* error, int size) {{\n"
                     f"    return ::cudasim::launch(dims, shared, [a] {{ {sig.name}({args}); }}, error, size);\n}}")
    return "\n".join(lines) + "\n"


def compiler() -> str:
    """The C++ compiler: $CXX, else g++."""
    return os.environ.get("CXX", "g++")


@functools.cache
def _version(cxx: str) -> str:
    """``cxx --version``, once per process (part of the build cache key)."""
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout


@functools.cache
def compiler_problem(cxx: str) -> str | None:
    """None when ``cxx`` compiles a C++20 shared library with std::atomic_ref, else why not."""
    if shutil.which(cxx) is None:
        return f"the C++ compiler {cxx!r} is not on PATH (set CXX or install g++ >= 10)"
    probe = "#include <atomic>\nint f(int* p) { return std::atomic_ref<int>(*p).fetch_add(1); }\n"
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([cxx, "-std=c++20", "-fPIC", "-shared", "-x", "c++", "-", "-o",
                                 str(Path(tmp) / "probe.so")], input=probe, capture_output=True, text=True,
                                timeout=120)
    if result.returncode != 0:
        return f"{cxx} cannot compile C++20 (std::atomic_ref): {result.stderr.strip()[:300]}"
    return None


def cache_dir() -> Path:
    """$CNNKIT_CUDASIM_CACHE, else ~/.cache/cnnkit/cudasim."""
    env = os.environ.get("CNNKIT_CUDASIM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cnnkit" / "cudasim"


def build(name: str, text: str, sanitize: str = "", debug: bool = False) -> tuple[Path, dict[str, Signature]]:
    """(shared library, kernel signatures) for kernel source ``text``, compiled once and cached on disk."""
    cxx = compiler()
    kernels = signatures(text, cxx)
    if not kernels:
        raise CompileError(f"{name}: no extern \"C\" __global__ kernel found")
    full = prepare(text) + "\n" + _trampolines(kernels)
    flags = (*FLAGS, *(DEBUG_FLAGS if debug else ()), *SANITIZE_FLAGS[sanitize], "-include", str(SHIM))
    key = hashlib.sha256("\0".join([full, SHIM.read_text(), cxx, _version(cxx), *flags]).encode()).hexdigest()[:20]
    out = cache_dir() / f"{name}-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        src = out.with_suffix(".cpp")
        src.write_text(full)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        result = subprocess.run([cxx, *flags, "-x", "c++", str(src), "-o", str(tmp)], capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise CompileError(f"{cxx} could not compile kernels {name!r} for the CPU simulator:\n{result.stderr}")
        os.replace(tmp, out)  # atomic: a concurrent process sees the old state or the whole library
    return out, kernels
