// cudasim.h: the CUDA built-ins cnnkit's kernels use, for running them on the CPU with real threads.
//
// backends/cudasim/build.py compiles each backends/cupy/kernels/<name>.cu, unchanged, with this header forced
// in front (g++ -include), after two textual rewrites of the source (see build.py): `__shared__ T a[..];`
// becomes a reference to a per-module block arena (shared_var below) and `extern __shared__ T a[];` a pointer
// to the launch's dynamic shared buffer. Everything else is plain C++20.
//
// Execution model (one launch at a time per module):
//  * a persistent pool of OS threads, one per thread of the block; thread i always plays threadIdx i;
//  * the blocks of the grid run one after another; every thread of the block runs the kernel for block b,
//    then all meet at an end-of-block barrier, so shared memory is never seen by two blocks at once;
//  * __syncthreads() is a real barrier of the block's threads (futex + C++ atomics, so ThreadSanitizer
//    sees the happens-before edges); a barrier phase at which some threads have finished the block while
//    others wait in __syncthreads is reported as an error (what compute-sanitizer's synccheck finds);
//  * shared memory (static and dynamic) is filled with 0xFF bytes (float NaN, int -1) before every block,
//    so a value read before it is written shows up.
// All state has internal linkage (anonymous namespace; build.py also passes -fno-gnu-unique and
// -fvisibility=hidden), so two loaded modules never share a pool, an arena or a template's static.
#pragma once

#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

// ----------------------------------------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)  // checked by the Python launcher (build.py reads it from the source)
#define __align__(n) alignas(n)
#define __shared__ static_assert(false, "cudasim: this __shared__ declaration form is not supported (build.py)")

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// The built-in indices: real variables (not macros), so gdb can print them and break on them.
static thread_local uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;  // written before the workers are woken (release), read after (acquire)

namespace cudasim {
namespace {

// ----------------------------------------------------------------------------------------------- futex
inline void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

inline void futex_wake(std::atomic<uint32_t>* word, int count) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// Wait until *word differs from `seen`; returns the new value (acquire).
inline uint32_t wait_change(std::atomic<uint32_t>& word, uint32_t seen) {
    uint32_t now;
    while ((now = word.load(std::memory_order_acquire)) == seen) futex_wait(&word, seen);
    return now;
}

struct BarrierAbort {};  // thrown out of __syncthreads when the launch is being abandoned

// ----------------------------------------------------------------------------------------------- shared memory
struct Region {
    unsigned char* data;
    size_t bytes;
};

// Module state is created once and never destroyed: the pool's threads outlive static destructors at exit.
std::mutex& arena_mutex = *new std::mutex;
std::vector<Region>& arena = *new std::vector<Region>;  // every static __shared__ variable, each its own block

void* register_shared(size_t bytes, size_t align) {
    auto* data = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(align < 16 ? 16 : align)));
    std::memset(data, 0xFF, bytes);
    std::lock_guard<std::mutex> lock(arena_mutex);
    arena.push_back(Region{data, bytes});
    return data;
}

// The one instance of a static __shared__ variable (ID numbers the declaration in its module).
template <class T, int ID>
T& shared_var() {
    static T* instance = static_cast<T*>(register_shared(sizeof(T), alignof(T)));
    return *instance;
}

// ----------------------------------------------------------------------------------------------- the pool
struct Launch {
    dim3 grid, block;
    unsigned int threads = 0, blocks = 0;
    std::function<void()> body;
    std::vector<unsigned char> dynamic_shared;
    std::string error;
};

struct Worker {
    unsigned int index = 0;
    std::atomic<uint32_t> go{0};
    pthread_t thread{};
};


struct Pool {
    std::mutex launch_mutex;  // one launch at a time
    std::vector<std::unique_ptr<Worker>> workers;
    Launch* launch = nullptr;
    std::atomic<uint32_t> finished{0};
    std::atomic<int> running{0};
    // the block barrier
    std::atomic<int> arrived{0}, ended{0};
    std::atomic<uint32_t> phase{0};
    bool abort = false;        // written by the last arriver before `phase` moves (release)
    unsigned int syncs = 0;    // completed __syncthreads of the running block
    unsigned int block_linear = 0;
};

Pool& pool = *new Pool;

void poison_shared(Launch& l) {
    {
        std::lock_guard<std::mutex> lock(arena_mutex);
        for (const Region& r : arena) std::memset(r.data, 0xFF, r.bytes);
    }
    if (!l.dynamic_shared.empty()) std::memset(l.dynamic_shared.data(), 0xFF, l.dynamic_shared.size());
}

// One barrier phase of the block's threads; `ending` says the thread finished the block. Returns false when
// the launch is abandoned (threads disagreed on the number of barriers).
bool arrive(bool ending) {
    Pool& p = pool;
    const uint32_t phase = p.phase.load(std::memory_order_acquire);
    if (ending) p.ended.fetch_add(1, std::memory_order_relaxed);
    const int threads = static_cast<int>(p.launch->threads);
    if (p.arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == threads) {
        const int ended = p.ended.load(std::memory_order_relaxed);
        if (ended != 0 && ended != threads) {
            const unsigned b = p.block_linear, gx = p.launch->grid.x, gy = p.launch->grid.y;
            char msg[400];
            std::snprintf(msg, sizeof msg,
                          "block (%u, %u, %u): %d of its %d threads finished the block while %d wait at "
                          "__syncthreads() number %u; every thread of a block must pass the same barriers "
                          "(CUDA leaves this undefined; compute-sanitizer --tool synccheck reports it)",
                          b % gx, (b / gx) % gy, b / (gx * gy), ended, threads, threads - ended, p.syncs + 1);
            p.launch->error = msg;
            p.abort = true;
        } else if (ended == threads) {
            p.syncs = 0;
            ++p.block_linear;
            poison_shared(*p.launch);
        } else {
            ++p.syncs;
        }
        p.arrived.store(0, std::memory_order_relaxed);
        p.ended.store(0, std::memory_order_relaxed);
        p.phase.store(phase + 1, std::memory_order_release);
        futex_wake(&p.phase, INT_MAX);
    } else {
        wait_change(p.phase, phase);
    }
    return !p.abort;
}

// Thread `index` of every block of the current launch.
void run_thread(unsigned int index) {
    Launch& l = *pool.launch;
    threadIdx = uint3{index % l.block.x, (index / l.block.x) % l.block.y, index / (l.block.x * l.block.y)};
    for (unsigned int b = 0; b < l.blocks; ++b) {
        blockIdx = uint3{b % l.grid.x, (b / l.grid.x) % l.grid.y, b / (l.grid.x * l.grid.y)};
        try {
            l.body();
        } catch (const BarrierAbort&) {
            return;
        }
        if (!arrive(true)) return;
    }
}

void* worker_main(void* arg) {
    Worker& w = *static_cast<Worker*>(arg);
    uint32_t seen = 0;
    for (;;) {
        seen = wait_change(w.go, seen);
        run_thread(w.index);
        if (pool.running.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            pool.finished.store(1, std::memory_order_release);
            futex_wake(&pool.finished, 1);
        }
    }
    return nullptr;
}

// Grow the pool to `threads` workers (signals stay with the Python thread).
bool grow(unsigned int threads, std::string& error) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    bool ok = true;
    while (pool.workers.size() < threads) {
        auto w = std::make_unique<Worker>();
        w->index = static_cast<unsigned int>(pool.workers.size());
        const int rc = pthread_create(&w->thread, nullptr, worker_main, w.get());
        if (rc != 0) {
            error = "could not start simulator thread " + std::to_string(w->index) + ": " + std::strerror(rc);
            ok = false;
            break;
        }
        pthread_detach(w->thread);
        pool.workers.push_back(std::move(w));
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return ok;
}

// Run `body` as a kernel over grid x block; the Python launcher has already checked the configuration.
int launch(const unsigned int* dims, unsigned long long dynamic_shared_bytes, std::function<void()> body,
           char* error, int error_size) {
    std::lock_guard<std::mutex> lock(pool.launch_mutex);
    Launch l;
    l.grid = dim3{dims[0], dims[1], dims[2]};
    l.block = dim3{dims[3], dims[4], dims[5]};
    l.threads = l.block.x * l.block.y * l.block.z;
    l.blocks = l.grid.x * l.grid.y * l.grid.z;
    l.body = std::move(body);
    l.dynamic_shared.resize(dynamic_shared_bytes);
    if (!grow(l.threads, l.error)) {
        std::snprintf(error, error_size, "%s", l.error.c_str());
        return 1;
    }
    pool.launch = &l;
    pool.abort = false;
    pool.syncs = 0;
    pool.block_linear = 0;
    gridDim = l.grid;
    blockDim = l.block;
    poison_shared(l);
    pool.finished.store(0, std::memory_order_relaxed);
    pool.running.store(static_cast<int>(l.threads), std::memory_order_release);
    for (unsigned int i = 0; i < l.threads; ++i) {
        pool.workers[i]->go.fetch_add(1, std::memory_order_release);
        futex_wake(&pool.workers[i]->go, 1);
    }
    wait_change(pool.finished, 0);
    pool.launch = nullptr;
    std::snprintf(error, error_size, "%s", l.error.c_str());
    return l.error.empty() ? 0 : 1;
}

template <class T>
T* dynamic_shared() {
    return reinterpret_cast<T*>(pool.launch->dynamic_shared.data());
}

}  // namespace
}  // namespace cudasim

// ----------------------------------------------------------------------------------------------- built-ins
#define warpSize 32

static inline void __syncthreads() {
    if (!::cudasim::arrive(false)) throw ::cudasim::BarrierAbort{};
}

// Atomics: read-modify-write through std::atomic_ref, returning the old value as CUDA does.
template <class T>
static inline T atomicAdd(T* address, std::type_identity_t<T> value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

template <class T>
static inline T atomicMax(T* address, std::type_identity_t<T> value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (old < value && !ref.compare_exchange_weak(old, value)) {
    }
    return old;
}

template <class T>
static inline T atomicCAS(T* address, std::type_identity_t<T> compare, std::type_identity_t<T> value) {
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
    return compare;  // the old value in both cases
}

// Integer and floating min / max (CUDA's device overloads of the same name).
#define CUDASIM_MIN_MAX(T)                                    \
    static inline T min(T a, T b) { return b < a ? b : a; }   \
    static inline T max(T a, T b) { return a < b ? b : a; }
CUDASIM_MIN_MAX(int)
CUDASIM_MIN_MAX(unsigned int)
CUDASIM_MIN_MAX(long long)
CUDASIM_MIN_MAX(unsigned long long)
#undef CUDASIM_MIN_MAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

// Bit casts and the fast-math intrinsics in use (glibc itself declares __expf and __logf).
static inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}
static inline int __float_as_int(float f) {
    int v;
    std::memcpy(&v, &f, sizeof v);
    return v;
}
static inline float __fdividef(float a, float b) { return a / b; }
// Round-to-nearest products and sums that nvcc never fuses (the simulator builds with -ffp-contract=off).
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
