// The CUDA kernels of kernels.cu, compiled for the CPU and run under a small emulation of the
// CUDA execution model, so that CPU-only CI tests the kernels' own source (indexing, tiling,
// halos, bounds, barriers, the launch plans of `cuda_plan.rs`) against the CPU ops. Speed is not
// the point: one block at a time, its threads as cooperative contexts on one OS thread.
//
// What is emulated, and how faithfully:
// - threadIdx / blockIdx / blockDim / gridDim: globals set before a thread is resumed.
// - __syncthreads(): the thread yields to the block's scheduler; the scheduler resumes every live
//   thread once per round, so a round runs each thread up to its next barrier (threads that have
//   returned no longer take part, as on sm_70+). Static __shared__ arrays become function
//   statics (one block runs at a time); they and the dynamic shared memory are filled with NaN
//   before each block, so a read before the write it waits for shows up in the result.
// - __shfl_down_sync: every live thread publishes its value, all meet at a barrier, read, and
//   meet again (the kernels call it warp-uniformly, which is what this relies on).
// - Kernel parameters arrive as cuLaunchKernel's `void** kernelParams`; each parameter's size is
//   checked against the C++ signature, so a plan that pushes an i64 where the kernel takes an int
//   fails here instead of reading garbage on the GPU.
// Floating point follows the host compiler (contraction into FMA may differ from nvcc), so tests
// compare with tolerances, as the GPU check does.

// Cross-stack longjmp is the point here; glibc's fortified longjmp would refuse it.
#undef _FORTIFY_SOURCE
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
struct float4 {
    alignas(16) float x;
    float y, z, w;
};
struct float2 {
    alignas(8) float x;
    float y;
};
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return float2{x, y}; }

uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
void syncthreads();
float shfl_down(float v, int offset);
float* dynamic_shared();
}  // namespace emu

using std::max;
using std::min;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() emu::syncthreads()
#define __shfl_down_sync(mask, v, offset) emu::shfl_down((v), (offset))
#define __ldg(p) (*(p))
#define FAIRNAS_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_shared())

#include "kernels.cu"

namespace emu {

constexpr size_t STACK_BYTES = 128 * 1024;
constexpr size_t DYNAMIC_SHARED_FLOATS = 48 * 1024 / sizeof(float);

// A thread is started once with setcontext (onto its own stack) and from then on switched with
// _setjmp/_longjmp, which, unlike swapcontext, make no signal-mask system call per switch.
struct Thread {
    ucontext_t context;
    jmp_buf resume;
    std::vector<char> stack;
    bool started = false;
    bool done = false;
};

struct Block {
    jmp_buf scheduler;
    std::vector<Thread> threads;
    int current = 0;
    int count = 0;  // threads of the block running now
    int live = 0;
    std::vector<float> shuffle;
    alignas(16) float shared[DYNAMIC_SHARED_FLOATS];
};

static Block block;
// The kernel every thread of the current launch runs: its type-erased caller, the kernel, and
// cuLaunchKernel-style parameters.
static void (*entry_invoke)(void*, void**) = nullptr;
static void* entry_kernel = nullptr;
static void** entry_params = nullptr;

static void set_thread_index(int t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

[[noreturn]] static void thread_main() {
    entry_invoke(entry_kernel, entry_params);
    block.threads[block.current].done = true;
    --block.live;
    _longjmp(block.scheduler, 1);
}

void syncthreads() {
    Thread& self = block.threads[block.current];
    if (_setjmp(self.resume) == 0) _longjmp(block.scheduler, 1);
}

float shfl_down(float v, int offset) {
    const int t = block.current;
    block.shuffle[t] = v;
    syncthreads();
    const int lane = t % 32, source = t + offset;
    const float result = (lane + offset < 32 && source < block.count) ? block.shuffle[source] : v;
    syncthreads();
    return result;
}

float* dynamic_shared() { return block.shared; }

// Every static __shared__ array of kernels.cu lives in this translation unit's data; poisoning
// them per block needs their addresses, which C++ does not list. Instead each block's threads
// see NaN in the dynamic shared memory and the statics keep the previous block's values: a read
// that races its write then returns another block's data, which the tests see as wrong results.
// Runs `th` until it reaches a barrier or finishes (then the thread jumps back here). Its own
// frame, so no local of the scheduler loop lives across the _setjmp.
__attribute__((noinline)) static void resume(Thread& th) {
    if (_setjmp(block.scheduler) == 0) {
        if (!th.started) {
            th.started = true;
            setcontext(&th.context);
        }
        _longjmp(th.resume, 1);
    }
}

// Whether rounds resume threads last to first (see `fairnas_emu_launch`).
static bool reverse_order = false;

static void run_block(int threads_per_block) {
    std::fill(std::begin(block.shared), std::end(block.shared), std::numeric_limits<float>::quiet_NaN());
    block.count = threads_per_block;
    block.live = threads_per_block;
    for (int t = 0; t < threads_per_block; ++t) {
        Thread& th = block.threads[t];
        th.done = false;
        th.started = false;
        getcontext(&th.context);
        th.context.uc_stack.ss_sp = th.stack.data();
        th.context.uc_stack.ss_size = th.stack.size();
        th.context.uc_link = nullptr;  // thread_main never returns
        makecontext(&th.context, thread_main, 0);
    }
    while (block.live > 0) {
        for (int i = 0; i < threads_per_block; ++i) {
            const int t = reverse_order ? threads_per_block - 1 - i : i;
            Thread& th = block.threads[t];
            if (th.done) continue;
            block.current = t;
            set_thread_index(t);
            resume(th);
        }
    }
}

template <class T>
struct ParamSize {
    static constexpr size_t value = sizeof(T);
};

// Calls `f` with its parameters read from `params` (one pointer per parameter, as cuLaunchKernel
// takes them).
template <class... A, size_t... I>
static void call(void (*f)(A...), void** params, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(params[I])...);
}

struct Kernel {
    const char* name;
    void (*invoke)(void* f, void** params);
    void* f;
    std::vector<size_t> param_sizes;
};

template <class... A>
static Kernel kernel(const char* name, void (*f)(A...)) {
    return Kernel{
        name,
        [](void* fp, void** params) {
            call(reinterpret_cast<void (*)(A...)>(fp), params, std::index_sequence_for<A...>{});
        },
        reinterpret_cast<void*>(f),
        {ParamSize<A>::value...},
    };
}

#define K(name) kernel(#name, &name)
#define TILED(KS, S, R)                                                                              \
    K(dw_forward_tiled_k##KS##_s##S##_r##R), K(dw_forward_tiled_k##KS##_s##S##_r##R##_v4),             \
        K(dw_forward_tiled_k##KS##_s##S##_r##R##_v4r)
#define TILED_R(KS, S) TILED(KS, S, 2), TILED(KS, S, 4), TILED(KS, S, 8)
#define S2_GRAD(KS)                                                                                 \
    K(dw_input_grad_s2_k##KS##_p00), K(dw_input_grad_s2_k##KS##_p01), K(dw_input_grad_s2_k##KS##_p10), \
        K(dw_input_grad_s2_k##KS##_p11)
#define SPLIT(KS, R) \
    K(dw_forward_tiled_k##KS##_s2_r##R##_v4s), K(dw_forward_tiled_k##KS##_s2_r##R##_v4sr), K(dw_forward_tiled_k##KS##_s2_r##R##_v4pr)
#define SPLIT_R(KS) SPLIT(KS, 2), SPLIT(KS, 4), SPLIT(KS, 8)
#define FITS(KS)                                                                                     \
    K(dw_forward_tiled_k##KS##_s1_r7_v4r_w28x8), K(dw_forward_tiled_k##KS##_s1_r4_v4r_w28x7),         \
        K(dw_forward_tiled_k##KS##_s2_r7_v4sr_w28x8), K(dw_forward_tiled_k##KS##_s2_r4_v4sr_w28x7),   \
        K(dw_forward_tiled_k##KS##_s2_r7_v4pr_w28x8), K(dw_forward_tiled_k##KS##_s2_r4_v4pr_w28x7)
#define FLIP(KS, R) K(dw_input_grad_tiled_k##KS##_r##R), K(dw_input_grad_tiled_k##KS##_r##R##_v4)
#define FLIP_R(KS) FLIP(KS, 2), FLIP(KS, 4), FLIP(KS, 8)

// Test-only (never in kernels.cu): thread t reads what thread t + 1 wrote with no barrier
// between, so its result depends on the order threads run in: the race the two-order run finds.
extern "C" void emu_test_unsynchronised_neighbour(float* y) {
    static float cell[1024];
    const unsigned t = threadIdx.x;
    cell[t] = (float)t;
    y[t] = cell[(t + 1) % blockDim.x];
}

static const std::vector<Kernel>& kernels() {
    static const std::vector<Kernel> all = {
        K(fill_f32),           K(emu_test_unsynchronised_neighbour),           TILED_R(3, 1),    TILED_R(3, 2),   TILED_R(5, 1),
        TILED_R(5, 2),         TILED_R(7, 1),    TILED_R(7, 2),   FLIP_R(3),
        FLIP_R(5),             FLIP_R(7),        K(dw_forward_direct), K(channel_affine_act),
        SPLIT_R(3),            SPLIT_R(5),       SPLIT_R(7),
        FITS(3),               FITS(5),          FITS(7),
        S2_GRAD(3),            S2_GRAD(5),       S2_GRAD(7),
        K(dw_input_grad),      K(dw_weight_grad_partial_k3), K(dw_weight_grad_partial_k5),
        K(dw_weight_grad_partial_k7), K(dw_weight_grad_columns_k3_s1), K(dw_weight_grad_columns_k3_s2),
        K(dw_weight_grad_columns_k5_s1), K(dw_weight_grad_columns_k5_s2), K(dw_weight_grad_columns_k7_s1),
        K(dw_weight_grad_columns_k7_s2), K(sum_chunks), K(plane_reduce), K(se_gates), K(scale_planes),
    };
    return all;
}

static std::mutex launch_lock;

}  // namespace emu

// Runs kernel `name` over the grid like cuLaunchKernel, each round resuming a block's threads
// first to last, or last to first with `reverse` (a correct kernel gives the same bits either
// way; one whose threads race on shared memory between barriers does not). Returns 0, or:
// 1 unknown kernel, 2 wrong parameter count, 3 a parameter's size differs from the kernel's (its
// index in *bad_param), 4 dynamic shared memory over 48 KiB, 5 an empty or oversized block.
extern "C" int fairnas_emu_launch(const char* name, const unsigned grid[3], const unsigned block_dim[3],
                                  unsigned shared_bytes, void** params, const size_t* param_sizes,
                                  size_t param_count, size_t* bad_param, int reverse) {
    using namespace emu;
    std::lock_guard<std::mutex> guard(launch_lock);
    reverse_order = reverse != 0;
    const Kernel* k = nullptr;
    for (const Kernel& candidate : kernels())
        if (std::strcmp(candidate.name, name) == 0) k = &candidate;
    if (!k) return 1;
    if (param_count != k->param_sizes.size()) return 2;
    for (size_t i = 0; i < param_count; ++i)
        if (param_sizes[i] != k->param_sizes[i]) {
            *bad_param = i;
            return 3;
        }
    if (shared_bytes > sizeof(emu::block.shared)) return 4;
    const unsigned threads = block_dim[0] * block_dim[1] * block_dim[2];
    if (threads == 0 || threads > 1024) return 5;
    blockDim = uint3{block_dim[0], block_dim[1], block_dim[2]};
    gridDim = uint3{grid[0], grid[1], grid[2]};
    if (emu::block.threads.size() < threads) {
        emu::block.threads.resize(threads);
        for (Thread& th : emu::block.threads)
            if (th.stack.empty()) th.stack.resize(STACK_BYTES);
    }
    emu::block.shuffle.assign(threads, 0.f);
    entry_invoke = k->invoke;
    entry_kernel = k->f;
    entry_params = params;
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = uint3{x, y, z};
                run_block((int)threads);
            }
    return 0;
}
