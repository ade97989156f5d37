// CUDA versions of fairnas-ops' kernels (f32). Each kernel is the `cuda_fwd` of the custom op
// whose `cpu_fwd` is the reference; see `cuda.rs` for the launch side and why each is shaped so.
//
// Layouts are NCHW, contiguous. Activation codes match `Activation::cuda_code`:
// 0 identity, 1 relu, 2 relu6, 3 swish, 4 sigmoid.

#define FAIRNAS_CUDA_KERNELS_VERSION 1

// Dynamic shared memory (emulator.cpp, which runs these kernels on the CPU in tests, defines
// its own).
#ifndef FAIRNAS_DYNAMIC_SHARED
#define FAIRNAS_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

// Fills a buffer with one value (the GPU check poisons outputs with NaN before each run, so an
// element a kernel fails to write cannot pass for a result).
extern "C" __global__ void fill_f32(float* __restrict__ y, long long total, float value) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = value;
}

__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
        case 1: return x != x ? x : fmaxf(x, 0.f);
        case 2: return x != x ? x : fminf(fmaxf(x, 0.f), 6.f);
        case 3: return x / (1.f + expf(-x));
        case 4: return 1.f / (1.f + expf(-x));
        default: return x;
    }
}

// Sum over a warp's 32 lanes (lane 0 holds the total), in a fixed order.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Depthwise forward.
//
// Tiled: a block of 32 x 8 threads computes a (8 R) x 32 patch of one (n, c) plane; thread
// (tx, ty) owns the R vertically adjacent outputs of column tx starting at row ty * R. The input
// patch the block needs (with the halo) is staged once in shared memory, so each input element
// leaves global memory about once; the k*k taps live in registers. Each thread walks the input
// rows of its strip once and adds every row into all outputs it touches (a sliding window), so
// shared memory is read (R - 1) * S + K times per K-wide window instead of R * K times.
// Stride 2 with float4 staging (SPLIT): the patch is stored de-interleaved, each row as its even
// columns then its odd ones (counted from the patch's first column), so that the 32 threads of
// a warp, which read columns 2 tx + kx, read consecutive words. Stored as is, the patch starts
// at a runtime column offset (0-3, for the 16-byte alignment), the compiler cannot pair the
// reads into conflict-free 64-bit loads, and each read hits every bank twice: twice the
// shared-memory wavefronts in the tap loop (k7 s2 reached 40-49% of the copy bandwidth against
// 70% for k3 s1 on 2026-11-28; the split is untimed). A float4 chunk goes out as two float2
// stores and the tap loop reads from two base
// addresses with compile-time offsets. Scalar staging starts at offset 0 and keeps the plain
// layout, whose even column pairs the compiler already reads as 64-bit loads.
// Fitted tiles (TW x BY threads other than 32 x 8, row staging only): 28 columns and 56 or 28
// rows, so that FairNAS's 112-, 56- and 28-wide planes are covered with no thread past the
// plane (32 x 8R tiles compute 77% useful outputs there, and the kernels are issue-bound). A
// block row then straddles two warps; nothing in the kernel depends on warps.
// Optional epilogue: y = act(acc * scale[c] + shift[c]) (eval-mode BN folded into an affine).
// FLIP reverses the taps: with stride 1, the input gradient is this convolution of the output
// gradient with the flipped filter and padding k - 1 - p.
// ---------------------------------------------------------------------------------------------

#define TILE_W 32
#define BLOCK_Y 8

// Writes the first `rows` of a thread's R outputs (stride `wo` apart) as act(acc * sc + sh).
template <int R, int ACT>
__device__ __forceinline__ void store_rows(const float (&acc)[R], float* dst, int wo, int rows, float sc,
                                           float sh) {
#pragma unroll
    for (int r = 0; r < R; ++r)
        if (r < rows) dst[r * wo] = activate(acc[r] * sc + sh, ACT);
}

// A compile-time int passed to a generic lambda (the tap loop's column parity).
template <int V>
struct IntConst {
    static constexpr int value = V;
};

template <int K, int S, int R, bool FLIP, bool VEC, bool SPLIT, bool ROW_STAGING, int TW = TILE_W, int BY = BLOCK_Y,
          bool PAIRS = false>
__device__ void dw_forward_tiled(const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ scale, const float* __restrict__ shift,
                                 float* __restrict__ y, int channels, int h, int wd, int ho, int wo,
                                 int pad_top, int pad_left, int act, int tiles_x, int tiles_y) {
    constexpr int TILE_H = R * BY;
    constexpr int IN_W = (TW - 1) * S + K;
    constexpr int IN_H = (TILE_H - 1) * S + K;
    constexpr int STRIP = (R - 1) * S + K;  // input rows one thread's strip reads
    // VEC: rows are staged from a 16-byte aligned column with float4 loads and stores, so the
    // patch starts up to 3 columns left of the first input column the tile needs.
    constexpr int PATCH_W = VEC ? ((IN_W + 3 + 3) / 4) * 4 : IN_W + 1;
    // SPLIT: the odd columns of a row start at HALF_W; PATCH_W is a multiple of 4, so both
    // halves hold their columns and the float2 stores are aligned.
    constexpr int HALF_W = PATCH_W / 2;
    static_assert(!SPLIT || (S == 2 && VEC && PATCH_W % 4 == 0), "de-interleaved rows: stride 2, float4 staging");
    // PAIRS: stride 2, rows as they are, each thread's taps read as float2 pairs from an even
    // column: lane tx's pairs start at word 2 tx + const, so a warp's 64-bit reads are
    // conflict-free (2 wavefronts each) and a K-wide window takes (K + 2) / 2 reads instead of K.
    // The block's column parity (col0 & 1, from the 16-byte aligned start) is uniform; the tap
    // loop is compiled once for each. The last pair ends at most at column IN_W + 2 < PATCH_W.
    static_assert(!PAIRS || (S == 2 && VEC && !SPLIT), "float2 tap pairs: stride 2, float4 staging, plain rows");
    __shared__ __align__(16) float patch[IN_H][PATCH_W];
    // 32-bit block arithmetic (the grid is below 2^32 blocks; a 64-bit division costs ~100
    // instructions); 64 bits only for the plane's base address.
    unsigned plane;
    int t, c;
    if constexpr (ROW_STAGING) {
        // A 3-D grid (tile, channel, sample): no runtime division for the plane and channel
        // (each costs ~20 SASS instructions per thread; the launch keeps channels and the batch
        // under 65536).
        t = (int)blockIdx.x;
        c = (int)blockIdx.y;
        plane = blockIdx.z * (unsigned)channels + (unsigned)c;
    } else {
        const unsigned tile = blockIdx.x;
        const unsigned tiles = (unsigned)(tiles_x * tiles_y);
        plane = tile / tiles;
        t = (int)(tile - plane * tiles);
        c = (int)(plane % (unsigned)channels);
    }
    const int ty_tile = ROW_STAGING ? (int)((unsigned)t / (unsigned)tiles_x) : t / tiles_x;
    const int oy0 = ty_tile * TILE_H, ox0 = (t - ty_tile * tiles_x) * TW;
    const float* src = x + (long long)plane * h * wd;
    const int iy0 = oy0 * S - pad_top, ix0 = ox0 * S - pad_left;
    // Every load of the patch is issued before the first shared-memory store waits on one
    // (compile-time trip counts, fully unrolled): a loop storing each value as it arrives keeps
    // one load in flight per thread and reached only 30% of the copy bandwidth.
    int shift_cols = 0;
    if constexpr (VEC) {
        // The launch guarantees wd % 4 == 0 and a 16-byte aligned plane; ox0 * S is a multiple
        // of 4, so the aligned start is ix0 rounded down and every float4 chunk lies wholly
        // inside or wholly outside the row.
        const int ix_a = ix0 >= 0 ? (ix0 & ~3) : -((-ix0 + 3) & ~3);
        shift_cols = ix0 - ix_a;
        constexpr int NQ = PATCH_W / 4;
        if constexpr (ROW_STAGING) {
            // Thread x of a block row stages float4 chunk x of a patch row (RPI rows per block
            // row and pass when a row has few chunks); the block rows take patch rows in turn.
            // Each thread's column, bounds and addresses are computed once and its later rows
            // are constant strides away, so a chunk costs a bounds test, a load and a store (the
            // chunk-indexed staging below divides and re-derives its row and column per chunk:
            // ~40 SASS instructions each, about a third of all a k7 s2 thread issues). These
            // kernels also take the 3-D grid above.
            static_assert(NQ <= TW, "a row of threads stages at least one patch row per pass");
            constexpr int RPI = TW / NQ;
            constexpr int ROWS_PER_PASS = RPI * BY;
            constexpr int PASSES = (IN_H + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
            // At most 8 loads (32 registers) in flight per thread before their stores: with
            // 256-thread blocks that is still far more bytes in flight than the memory needs.
            constexpr int IN_FLIGHT = PASSES < 8 ? PASSES : 8;
            const int sub = threadIdx.x / NQ, q = threadIdx.x - (threadIdx.x / NQ) * NQ;
            const int py0 = threadIdx.y * RPI + sub;
            const int ix = ix_a + 4 * q;
            const bool lane_ok = sub < RPI;
            const bool col_ok = lane_ok && (unsigned)ix < (unsigned)wd;
            // The next row's address is one 64-bit add away (an int offset per row costs a sign
            // extension and a scaled 64-bit add, and the compiler re-reads the base pointer).
            const float* next = src + (iy0 + py0) * wd + ix;  // read only when valid
            const long long pass_stride = (long long)ROWS_PER_PASS * wd;
            const int iy_first = iy0 + py0;
#pragma unroll
            for (int b = 0; b < PASSES; b += IN_FLIGHT) {
                float4 staged[IN_FLIGHT];
#pragma unroll
                for (int i = 0; i < IN_FLIGHT; ++i) {
                    const int py = py0 + (b + i) * ROWS_PER_PASS;
                    const bool ok = b + i < PASSES && col_ok && py < IN_H &&
                                    (unsigned)(iy_first + (b + i) * ROWS_PER_PASS) < (unsigned)h;
                    staged[i] = ok ? __ldg(reinterpret_cast<const float4*>(next)) : make_float4(0.f, 0.f, 0.f, 0.f);
                    next += pass_stride;
                }
#pragma unroll
                for (int i = 0; i < IN_FLIGHT; ++i) {
                    const int py = py0 + (b + i) * ROWS_PER_PASS;
                    if (b + i < PASSES && lane_ok && py < IN_H) {
                        if constexpr (SPLIT) {
                            *reinterpret_cast<float2*>(&patch[py][2 * q]) = make_float2(staged[i].x, staged[i].z);
                            *reinterpret_cast<float2*>(&patch[py][HALF_W + 2 * q]) = make_float2(staged[i].y, staged[i].w);
                        } else {
                            *reinterpret_cast<float4*>(&patch[py][4 * q]) = staged[i];
                        }
                    }
                }
            }
        } else {
            constexpr int CHUNKS = IN_H * NQ;
            constexpr int ROUNDS = (CHUNKS + TW * BY - 1) / (TW * BY);
            const int tid = threadIdx.y * TW + threadIdx.x;
            float4 staged[ROUNDS];
#pragma unroll
            for (int k = 0; k < ROUNDS; ++k) {
                const int idx = tid + k * TW * BY;
                const int py = idx / NQ, q = idx - (idx / NQ) * NQ;
                const int iy = iy0 + py, ix = ix_a + 4 * q;
                const bool ok = idx < CHUNKS && (unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)wd;
                staged[k] = ok ? __ldg(reinterpret_cast<const float4*>(src + iy * wd + ix)) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
            for (int k = 0; k < ROUNDS; ++k) {
                const int idx = tid + k * TW * BY;
                if (idx < CHUNKS) {
                    const int py = idx / NQ, q = idx - (idx / NQ) * NQ;
                    if constexpr (SPLIT) {
                        // Columns 4q, 4q + 2 are even (index 2q, 2q + 1), 4q + 1, 4q + 3 odd.
                        *reinterpret_cast<float2*>(&patch[py][2 * q]) = make_float2(staged[k].x, staged[k].z);
                        *reinterpret_cast<float2*>(&patch[py][HALF_W + 2 * q]) = make_float2(staged[k].y, staged[k].w);
                    } else {
                        *reinterpret_cast<float4*>(&patch[py][4 * q]) = staged[k];
                    }
                }
            }
        }
    } else {
        // Column bounds are the same for every row: computed once.
        constexpr int LOAD_ROWS = (IN_H + BY - 1) / BY;
        constexpr int LOAD_COLS = (IN_W + TW - 1) / TW;
        bool col_ok[LOAD_COLS];
#pragma unroll
        for (int j = 0; j < LOAD_COLS; ++j) {
            const int px = threadIdx.x + j * TW;
            col_ok[j] = px < IN_W && (unsigned)(ix0 + px) < (unsigned)wd;
        }
        float staged[LOAD_ROWS][LOAD_COLS];
        int offset = (iy0 + (int)threadIdx.y) * wd + ix0 + (int)threadIdx.x;  // read only when valid
#pragma unroll
        for (int i = 0; i < LOAD_ROWS; ++i) {
            const int py = threadIdx.y + i * BY;
            const bool row_ok = py < IN_H && (unsigned)(iy0 + py) < (unsigned)h;
#pragma unroll
            for (int j = 0; j < LOAD_COLS; ++j)
                staged[i][j] = (row_ok && col_ok[j]) ? __ldg(src + offset + j * TW) : 0.f;
            offset += BY * wd;
        }
#pragma unroll
        for (int i = 0; i < LOAD_ROWS; ++i) {
            const int py = threadIdx.y + i * BY;
#pragma unroll
            for (int j = 0; j < LOAD_COLS; ++j) {
                const int px = threadIdx.x + j * TW;
                if (py < IN_H && px < IN_W) patch[py][px] = staged[i][j];
            }
        }
    }
    float taps[K * K];
#pragma unroll
    for (int i = 0; i < K * K; ++i) taps[i] = __ldg(w + c * K * K + (FLIP ? K * K - 1 - i : i));
    __syncthreads();
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    const int ly0 = threadIdx.y * R;
    const int col0 = shift_cols + threadIdx.x * S;
    // SPLIT: patch column c = col0 + kx is in half (c & 1) at c >> 1. With p = col0 & 1
    // (= shift_cols & 1), even taps 2m sit at (p, (col0 >> 1) + m) and odd taps 2m + 1 at
    // (1 - p, ((col0 + 1) >> 1) + m).
    const int even_tap = (shift_cols & 1) * HALF_W + (col0 >> 1);
    const int odd_tap = (1 - (shift_cols & 1)) * HALF_W + ((col0 + 1) >> 1);
    const auto convolve = [&](auto parity) {
        constexpr int P = decltype(parity)::value;
        constexpr int NP = (P + K + 1) / 2;
#pragma unroll
        for (int j = 0; j < STRIP; ++j) {
            float v[K];
            if constexpr (PAIRS) {
                float pair[2 * NP];
                const float* row = &patch[ly0 * S + j][col0 - P];
#pragma unroll
                for (int m = 0; m < NP; ++m) {
                    const float2 q = *reinterpret_cast<const float2*>(row + 2 * m);
                    pair[2 * m] = q.x;
                    pair[2 * m + 1] = q.y;
                }
#pragma unroll
                for (int kx = 0; kx < K; ++kx) v[kx] = pair[P + kx];
            } else {
#pragma unroll
                for (int kx = 0; kx < K; ++kx) {
                    if constexpr (SPLIT)
                        v[kx] = patch[ly0 * S + j][(kx & 1 ? odd_tap : even_tap) + (kx >> 1)];
                    else
                        v[kx] = patch[ly0 * S + j][col0 + kx];
                }
            }
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int ky = j - r * S;  // compile-time after unrolling
                if (ky >= 0 && ky < K) {
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) acc[r] += taps[ky * K + kx] * v[kx];
                }
            }
        }
    };
    if constexpr (PAIRS) {
        if (col0 & 1)
            convolve(IntConst<1>{});
        else
            convolve(IntConst<0>{});
    } else {
        convolve(IntConst<0>{});
    }
    const float sc = scale ? __ldg(scale + c) : 1.f;
    const float sh = scale ? __ldg(shift + c) : 0.f;
    float* dst = y + (long long)plane * ho * wo + (oy0 + ly0) * wo + ox0 + threadIdx.x;
    const int rows = min(R, ho - (oy0 + ly0));
    if (ox0 + (int)threadIdx.x >= wo) return;
    // One uniform branch on the activation, then a straight-line epilogue per case (a switch
    // per output cost as many instructions as the 3x3 taps).
    switch (act) {
        case 1: store_rows<R, 1>(acc, dst, wo, rows, sc, sh); break;
        case 2: store_rows<R, 2>(acc, dst, wo, rows, sc, sh); break;
        case 3: store_rows<R, 3>(acc, dst, wo, rows, sc, sh); break;
        case 4: store_rows<R, 4>(acc, dst, wo, rows, sc, sh); break;
        default: store_rows<R, 0>(acc, dst, wo, rows, sc, sh); break;
    }
}

#define DW_TILED(K, S, R, VEC, SPLIT, ROWS, SUFFIX)                                                  \
    extern "C" __global__ void __launch_bounds__(TILE_W * BLOCK_Y)                                  \
    dw_forward_tiled_k##K##_s##S##_r##R##SUFFIX(const float* x, const float* w, const float* scale, \
                                                const float* shift, float* y, int channels, int h,  \
                                                int wd, int ho, int wo, int pad_top, int pad_left,  \
                                                int act, int tiles_x, int tiles_y) {                \
        dw_forward_tiled<K, S, R, false, VEC, SPLIT, ROWS>(x, w, scale, shift, y, channels, h, wd,  \
                                                           ho, wo, pad_top, pad_left, act, tiles_x, \
                                                           tiles_y);                                \
    }
#define DW_TILED_FLIP(K, R, VEC, SUFFIX)                                                             \
    extern "C" __global__ void __launch_bounds__(TILE_W * BLOCK_Y)                                  \
    dw_input_grad_tiled_k##K##_r##R##SUFFIX(const float* g, const float* w, float* dx,              \
                                            int channels, int ho, int wo, int h, int wd,            \
                                            int pad_top, int pad_left, int tiles_x, int tiles_y) {  \
        dw_forward_tiled<K, 1, R, true, VEC, false, false>(g, w, nullptr, nullptr, dx, channels,    \
                                                           ho, wo, h, wd, pad_top, pad_left, 0,     \
                                                           tiles_x, tiles_y);                       \
    }
// Suffixes: none (scalar staging), _v4 (float4 staging, chunk-indexed), _v4s (the same with
// de-interleaved rows: stride 2 only), _v4r / _v4sr (float4 staging by patch rows, plain /
// de-interleaved).
#define DW_TILED_BOTH(K, S, R)                                                                        \
    DW_TILED(K, S, R, false, false, false, ) DW_TILED(K, S, R, true, false, false, _v4)             \
    DW_TILED(K, S, R, true, false, true, _v4r)
#define DW_TILED_ALL_R(K, S) DW_TILED_BOTH(K, S, 2) DW_TILED_BOTH(K, S, 4) DW_TILED_BOTH(K, S, 8)
#define DW_TILED_SPLIT(K, R) DW_TILED(K, 2, R, true, true, false, _v4s) DW_TILED(K, 2, R, true, true, true, _v4sr)
#define DW_TILED_SPLIT_R(K) DW_TILED_SPLIT(K, 2) DW_TILED_SPLIT(K, 4) DW_TILED_SPLIT(K, 8)
// Stride 2, rows as they are, taps read in float2 pairs, row staging (suffix _v4pr).
#define DW_TILED_PAIRS(K, R)                                                                         \
    extern "C" __global__ void __launch_bounds__(TILE_W * BLOCK_Y)                                  \
    dw_forward_tiled_k##K##_s2_r##R##_v4pr(const float* x, const float* w, const float* scale,      \
                                           const float* shift, float* y, int channels, int h,       \
                                           int wd, int ho, int wo, int pad_top, int pad_left,       \
                                           int act, int tiles_x, int tiles_y) {                     \
        dw_forward_tiled<K, 2, R, false, true, false, true, TILE_W, BLOCK_Y, true>(                 \
            x, w, scale, shift, y, channels, h, wd, ho, wo, pad_top, pad_left, act, tiles_x,        \
            tiles_y);                                                                               \
    }
#define DW_TILED_PAIRS_R(K) DW_TILED_PAIRS(K, 2) DW_TILED_PAIRS(K, 4) DW_TILED_PAIRS(K, 8)
DW_TILED_PAIRS_R(3)
DW_TILED_PAIRS_R(5)
DW_TILED_PAIRS_R(7)
// Fitted tiles: 28 x 56 outputs (R 7, 28 x 8 threads) and 28 x 28 (R 4, 28 x 7 threads), row
// staging, at stride 2 de-interleaved rows or taps in pairs (suffix _w28x8 / _w28x7).
#define DW_TILED_FIT(K, S, R, BY, SPLIT, PAIRS, SUFFIX)                                              \
    extern "C" __global__ void __launch_bounds__(28 * BY)                                           \
    dw_forward_tiled_k##K##_s##S##_r##R##SUFFIX##_w28x##BY(                                         \
        const float* x, const float* w, const float* scale, const float* shift, float* y,           \
        int channels, int h, int wd, int ho, int wo, int pad_top, int pad_left, int act,            \
        int tiles_x, int tiles_y) {                                                                 \
        dw_forward_tiled<K, S, R, false, true, SPLIT, true, 28, BY, PAIRS>(x, w, scale, shift, y,   \
                                                                    channels, h, wd, ho, wo,        \
                                                                    pad_top, pad_left, act,         \
                                                                    tiles_x, tiles_y);              \
    }
#define DW_TILED_FITS(K)                                                                              \
    DW_TILED_FIT(K, 1, 7, 8, false, false, _v4r) DW_TILED_FIT(K, 1, 4, 7, false, false, _v4r)       \
    DW_TILED_FIT(K, 2, 7, 8, true, false, _v4sr) DW_TILED_FIT(K, 2, 4, 7, true, false, _v4sr)       \
    DW_TILED_FIT(K, 2, 7, 8, false, true, _v4pr) DW_TILED_FIT(K, 2, 4, 7, false, true, _v4pr)
DW_TILED_FITS(3)
DW_TILED_FITS(5)
DW_TILED_FITS(7)
DW_TILED_ALL_R(3, 1)
DW_TILED_ALL_R(3, 2)
DW_TILED_ALL_R(5, 1)
DW_TILED_ALL_R(5, 2)
DW_TILED_ALL_R(7, 1)
DW_TILED_ALL_R(7, 2)
DW_TILED_SPLIT_R(3)
DW_TILED_SPLIT_R(5)
DW_TILED_SPLIT_R(7)
#define DW_FLIP_BOTH(K, R) DW_TILED_FLIP(K, R, false, ) DW_TILED_FLIP(K, R, true, _v4)
DW_FLIP_BOTH(3, 2) DW_FLIP_BOTH(3, 4) DW_FLIP_BOTH(3, 8)
DW_FLIP_BOTH(5, 2) DW_FLIP_BOTH(5, 4) DW_FLIP_BOTH(5, 8)
DW_FLIP_BOTH(7, 2) DW_FLIP_BOTH(7, 4) DW_FLIP_BOTH(7, 8)

// One thread per output element: for small planes (7x7, 14x14) where a 32x16 tile would leave
// most threads idle, and for any kernel size or stride the tiled variants do not cover.
extern "C" __global__ void dw_forward_direct(const float* __restrict__ x, const float* __restrict__ w,
                                             const float* __restrict__ scale,
                                             const float* __restrict__ shift, float* __restrict__ y,
                                             long long total, int channels, int h, int wd, int ho,
                                             int wo, int k, int stride, int pad_top, int pad_left,
                                             int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ox = (int)(i % wo);
        const int oy = (int)((i / wo) % ho);
        const long long plane = i / ((long long)wo * ho);
        const int c = (int)(plane % channels);
        const float* src = x + plane * (long long)h * wd;
        const float* f = w + (long long)c * k * k;
        float acc = 0.f;
        for (int ky = 0; ky < k; ++ky) {
            const int iy = oy * stride + ky - pad_top;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < k; ++kx) {
                const int ix = ox * stride + kx - pad_left;
                if (ix < 0 || ix >= wd) continue;
                acc += __ldg(f + ky * k + kx) * __ldg(src + iy * wd + ix);
            }
        }
        if (scale) acc = acc * __ldg(scale + c) + __ldg(shift + c);
        y[i] = activate(acc, act);
    }
}

// Eval-mode BN + activation after a convolution that is not ours (pointwise GEMM, stem):
// y = act(x * scale[c] + shift[c]), one pass.
extern "C" __global__ void channel_affine_act(const float* __restrict__ x, const float* __restrict__ scale,
                                              const float* __restrict__ shift, float* __restrict__ y,
                                              long long total, int channels, int hw, int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)((i / hw) % channels);
        y[i] = activate(__ldg(x + i) * __ldg(scale + c) + __ldg(shift + c), act);
    }
}

// ---------------------------------------------------------------------------------------------
// Depthwise backward.
// ---------------------------------------------------------------------------------------------

// Input gradient as a gather (no atomics, deterministic): input (iy, ix) receives
// g[oy, ox] * w[ky, kx] for every tap with oy * s + ky - pad_top == iy (and likewise for x).
extern "C" __global__ void dw_input_grad(const float* __restrict__ g, const float* __restrict__ w,
                                         float* __restrict__ dx, long long total, int channels,
                                         int h, int wd, int ho, int wo, int k, int stride,
                                         int pad_top, int pad_left) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ix = (int)(i % wd);
        const int iy = (int)((i / wd) % h);
        const long long plane = i / ((long long)wd * h);
        const int c = (int)(plane % channels);
        const float* gp = g + plane * (long long)ho * wo;
        const float* f = w + (long long)c * k * k;
        float acc = 0.f;
        // Only taps with (i + pad - tap) divisible by the stride reach this input: start at the
        // first such tap and step by the stride (no modulo in the loop).
        const int ky0 = (iy + pad_top) % stride, kx0 = (ix + pad_left) % stride;
        for (int ky = ky0; ky < k; ky += stride) {
            const int ty = iy + pad_top - ky;
            if (ty < 0) break;
            const int oy = ty / stride;
            if (oy >= ho) continue;
            for (int kx = kx0; kx < k; kx += stride) {
                const int tx = ix + pad_left - kx;
                if (tx < 0) break;
                const int ox = tx / stride;
                if (ox >= wo) continue;
                acc += __ldg(f + ky * k + kx) * __ldg(gp + oy * wo + ox);
            }
        }
        dx[i] = acc;
    }
}

// Input gradient at stride 2, register-blocked by phase: thread (tx, ty) owns the 2x2 blocks of
// dx at rows 2 (a + r) + {0, 1} (r < RP) and columns 2 b + {0, 1}. Input (iy, ix) receives
// g[oy, ox] * w[ky, kx] only from taps with ky = iy + pad_top (mod 2), so each of the four
// outputs of a block uses one parity class of the taps, and all four read the same
// ((K + 1) / 2 + RP - 1) x (K + 1) / 2 window of g: every tap is one FMA per block, every g
// value one load per thread (coalesced across the warp, neighbours' reuse served by L1). With
// PY = pad_top & 1 and PX = pad_left & 1 as template parameters, every tap index and window
// offset is a compile-time constant. The gather kernel it replaces reached 3% of the copy
// bandwidth (one thread per input, a division and a branch per tap).
template <int K, int RP, int PY, int PX>
__device__ void dw_input_grad_s2(const float* __restrict__ g, const float* __restrict__ w,
                                 float* __restrict__ dx, int channels, int ho, int wo, int h, int wd,
                                 int pad_top, int pad_left, int tiles_x, int tiles_y) {
    // Window offsets d = (p + P - k) / 2 over the taps k of parity p + P: from DMIN to P.
    constexpr int DMIN_Y = PY == 0 ? -(K - 1) / 2 : -(K - 3) / 2;
    constexpr int DMIN_X = PX == 0 ? -(K - 1) / 2 : -(K - 3) / 2;
    constexpr int WIN_Y = PY - DMIN_Y + RP, WIN_X = PX - DMIN_X + 1;
    const unsigned tile = blockIdx.x;
    const unsigned tiles = (unsigned)(tiles_x * tiles_y);
    const unsigned plane = tile / tiles;
    const int t = (int)(tile - plane * tiles);
    const int tile_y = t / tiles_x, tile_x = t - (t / tiles_x) * tiles_x;
    const int a0 = (tile_y * BLOCK_Y + (int)threadIdx.y) * RP;  // first row pair
    const int b = tile_x * TILE_W + (int)threadIdx.x;          // column pair
    const int c = (int)(plane % (unsigned)channels);
    const float* gp = g + (long long)plane * ho * wo;
    float taps[K * K];
#pragma unroll
    for (int i = 0; i < K * K; ++i) taps[i] = __ldg(w + c * K * K + i);
    // g window: rows gy0 + DMIN_Y .., columns gx0 + DMIN_X .. (zero outside g).
    const int gy0 = a0 + (pad_top >> 1) + DMIN_Y, gx0 = b + (pad_left >> 1) + DMIN_X;
    bool col_ok[WIN_X];
#pragma unroll
    for (int j = 0; j < WIN_X; ++j) col_ok[j] = (unsigned)(gx0 + j) < (unsigned)wo;
    float win[WIN_Y][WIN_X];
#pragma unroll
    for (int i = 0; i < WIN_Y; ++i) {
        const bool row_ok = (unsigned)(gy0 + i) < (unsigned)ho;
#pragma unroll
        for (int j = 0; j < WIN_X; ++j)
            win[i][j] = (row_ok && col_ok[j]) ? __ldg(gp + (gy0 + i) * wo + gx0 + j) : 0.f;
    }
    float* dst = dx + (long long)plane * h * wd;
    const int ix = 2 * b;
    if (ix >= wd) return;
#pragma unroll
    for (int r = 0; r < RP; ++r) {
#pragma unroll
        for (int py = 0; py < 2; ++py) {
            float acc[2] = {0.f, 0.f};
#pragma unroll
            for (int px = 0; px < 2; ++px) {
#pragma unroll
                for (int ky = (py + PY) & 1; ky < K; ky += 2) {
#pragma unroll
                    for (int kx = (px + PX) & 1; kx < K; kx += 2) {
                        // g row a + r + pad_top / 2 + (py + PY - ky) / 2, i.e. window row
                        // r + (py + PY - ky) / 2 - DMIN_Y (the numerator is even).
                        const int wy = r + (py + PY - ky) / 2 - DMIN_Y;
                        const int wx = (px + PX - kx) / 2 - DMIN_X;
                        acc[px] += taps[ky * K + kx] * win[wy][wx];
                    }
                }
            }
            const int iy = 2 * (a0 + r) + py;
            if (iy < h) {
                dst[iy * wd + ix] = acc[0];
                if (ix + 1 < wd) dst[iy * wd + ix + 1] = acc[1];
            }
        }
    }
}

#define DW_INPUT_GRAD_S2(K, RP, PY, PX)                                                             \
    extern "C" __global__ void __launch_bounds__(TILE_W * BLOCK_Y)                                  \
    dw_input_grad_s2_k##K##_p##PY##PX(const float* g, const float* w, float* dx, int channels,     \
                                      int ho, int wo, int h, int wd, int pad_top, int pad_left,     \
                                      int tiles_x, int tiles_y) {                                   \
        dw_input_grad_s2<K, RP, PY, PX>(g, w, dx, channels, ho, wo, h, wd, pad_top, pad_left,      \
                                        tiles_x, tiles_y);                                          \
    }
#define DW_INPUT_GRAD_S2_ALL(K) \
    DW_INPUT_GRAD_S2(K, 2, 0, 0) DW_INPUT_GRAD_S2(K, 2, 0, 1) DW_INPUT_GRAD_S2(K, 2, 1, 0) DW_INPUT_GRAD_S2(K, 2, 1, 1)
DW_INPUT_GRAD_S2_ALL(3)
DW_INPUT_GRAD_S2_ALL(5)
DW_INPUT_GRAD_S2_ALL(7)

// Weight gradient, stage 1: block (c, chunk) sums x-window * g over the samples of its chunk for
// all k*k taps at once (each thread keeps k*k partial sums), then reduces across the block in a
// fixed order. Several chunks per channel keep the GPU busy when channels are few (32 in the
// early layers). Stage 2 sums the chunks in order, so the result is deterministic.
#define WG_THREADS 256
template <int K>
__device__ void dw_weight_grad_partial(const float* __restrict__ x, const float* __restrict__ g,
                                       float* __restrict__ partial, int batch, int channels, int h,
                                       int wd, int ho, int wo, int stride, int pad_top,
                                       int pad_left, int chunks) {
    const int c = blockIdx.x % channels;
    const int chunk = blockIdx.x / channels;
    const int per = (batch + chunks - 1) / chunks;
    const int n0 = chunk * per, n1 = min(batch, n0 + per);
    float acc[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t) acc[t] = 0.f;
    const long long positions = (long long)ho * wo;
    for (int n = n0; n < n1; ++n) {
        const long long plane = (long long)n * channels + c;
        const float* xp = x + plane * h * wd;
        const float* gp = g + plane * positions;
        for (long long p = threadIdx.x; p < positions; p += WG_THREADS) {
            const int oy = (int)(p / wo), ox = (int)(p % wo);
            const float gv = __ldg(gp + p);
#pragma unroll
            for (int ky = 0; ky < K; ++ky) {
                const int iy = oy * stride + ky - pad_top;
                const bool row_ok = iy >= 0 && iy < h;
#pragma unroll
                for (int kx = 0; kx < K; ++kx) {
                    const int ix = ox * stride + kx - pad_left;
                    if (row_ok && ix >= 0 && ix < wd) acc[ky * K + kx] += gv * __ldg(xp + iy * wd + ix);
                }
            }
        }
    }
    __shared__ float red[WG_THREADS];
#pragma unroll
    for (int t = 0; t < K * K; ++t) {
        red[threadIdx.x] = acc[t];
        __syncthreads();
        for (int s = WG_THREADS / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) partial[((long long)chunk * channels + c) * K * K + t] = red[0];
        __syncthreads();
    }
}

#define DW_WGRAD(K)                                                                                \
    extern "C" __global__ void __launch_bounds__(WG_THREADS) dw_weight_grad_partial_k##K(          \
        const float* x, const float* g, float* partial, int batch, int channels, int h, int wd,   \
        int ho, int wo, int stride, int pad_top, int pad_left, int chunks) {                      \
        dw_weight_grad_partial<K>(x, g, partial, batch, channels, h, wd, ho, wo, stride, pad_top, \
                                  pad_left, chunks);                                              \
    }
DW_WGRAD(3)
DW_WGRAD(5)
DW_WGRAD(7)

// Weight gradient, stage 1, by columns (stride 1 and 2): block (c, chunk) of 32 x 8 threads;
// a thread owns one output column ox of one sample at a time and walks down the input rows that
// column reads. Tap (ky, kx) sums g[oy][ox] * x[oy S + ky - pad_top][ox S + kx - pad_left], so an
// input row iy meets, for each ky, the one g row oy = (iy + pad_top - ky) / S (when divisible):
// the thread keeps those few g values in a register ring and loads each x row once (k values)
// and each g value once, where `dw_weight_grad_partial` loads k * k + 1 values per output position
// (9-20% of the copy bandwidth). Registers: k * k sums, the ring and one x row (a k x k window of
// x would need 49 more for k = 7 and leave one block per multiprocessor). A warp's 32 threads hold
// 32 adjacent columns (coalesced). Units (sample, group of 32 columns) go to the 8 thread rows in
// a fixed order; the sums are reduced per warp with shuffles and across warps in order:
// deterministic.
template <int K>
__device__ __forceinline__ void load_row(float (&xr)[K], const float* row, int ix0, const bool (&col_ok)[K]) {
#pragma unroll
    for (int kx = 0; kx < K; ++kx) xr[kx] = col_ok[kx] ? __ldg(row + ix0 + kx) : 0.f;
}

template <int K, int S>
__device__ void dw_weight_grad_columns(const float* __restrict__ x, const float* __restrict__ g,
                                       float* __restrict__ partial, int batch, int channels, int h,
                                       int wd, int ho, int wo, int pad_top, int pad_left, int chunks) {
    static_assert(S == 1 || S == 2, "strides 1 and 2");
    // Ring length: g rows an input row meets (one per tap row at stride 1, per tap-row pair at 2).
    constexpr int G = S == 1 ? K : (K + 1) / 2;
    const int c = blockIdx.x % channels;
    const int chunk = blockIdx.x / channels;
    const int per = (batch + chunks - 1) / chunks;
    const int n0 = chunk * per, n1 = min(batch, n0 + per);
    const int groups = (wo + TILE_W - 1) / TILE_W;
    const int units = n1 > n0 ? (n1 - n0) * groups : 0;
    float acc[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t) acc[t] = 0.f;
    for (int u = threadIdx.y; u < units; u += BLOCK_Y) {
        const int n = n0 + u / groups;
        const int ox = (u - (u / groups) * groups) * TILE_W + (int)threadIdx.x;
        if (ox >= wo) continue;
        const long long plane = (long long)n * channels + c;
        const float* xp = x + plane * h * wd;
        const float* gp = g + plane * ho * wo + ox;
        const int ix0 = ox * S - pad_left;
        bool col_ok[K];
#pragma unroll
        for (int kx = 0; kx < K; ++kx) col_ok[kx] = (unsigned)(ix0 + kx) < (unsigned)wd;
        auto g_at = [&](int oy) { return (unsigned)oy < (unsigned)ho ? __ldg(gp + oy * wo) : 0.f; };
        float ring[G], xr[K];
        if constexpr (S == 1) {
            // Row iy: ring[ky] = g[iy + pad_top - ky].
#pragma unroll
            for (int m = 0; m < G; ++m) ring[m] = g_at(pad_top - m);
            const int rows = min(h, ho + K - 1 - pad_top);
            for (int iy = 0; iy < rows; ++iy) {
                load_row<K>(xr, xp + iy * wd, ix0, col_ok);
#pragma unroll
                for (int ky = 0; ky < K; ++ky)
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) acc[ky * K + kx] += ring[ky] * xr[kx];
#pragma unroll
                for (int m = G - 1; m > 0; --m) ring[m] = ring[m - 1];
                ring[0] = g_at(iy + 1 + pad_top);
            }
        } else {
            // Rows in pairs (iy, iy + 1) with iy + pad_top = q even: ring[m] = g[q / 2 - m] serves
            // the even taps ky = 2m of row iy and the odd taps ky = 2m + 1 of row iy + 1. Row -1
            // (when pad_top is odd) is padding: skipped.
            int iy = -(pad_top & 1);
#pragma unroll
            for (int m = 0; m < G; ++m) ring[m] = g_at((iy + pad_top) / 2 - m);
            const int rows = min(h, 2 * (ho - 1) + K - pad_top);
            for (; iy < rows; iy += 2) {
                if (iy >= 0) {
                    load_row<K>(xr, xp + iy * wd, ix0, col_ok);
#pragma unroll
                    for (int m = 0; m < G; ++m)
#pragma unroll
                        for (int kx = 0; kx < K; ++kx) acc[2 * m * K + kx] += ring[m] * xr[kx];
                }
                if (iy + 1 < rows) {
                    load_row<K>(xr, xp + (iy + 1) * wd, ix0, col_ok);
#pragma unroll
                    for (int m = 0; m + 1 < G; ++m)
#pragma unroll
                        for (int kx = 0; kx < K; ++kx) acc[(2 * m + 1) * K + kx] += ring[m] * xr[kx];
                }
#pragma unroll
                for (int m = G - 1; m > 0; --m) ring[m] = ring[m - 1];
                ring[0] = g_at((iy + 2 + pad_top) / 2);
            }
        }
    }
    __shared__ float red[K * K][BLOCK_Y];
    const int lane = threadIdx.x, warp = threadIdx.y;
#pragma unroll
    for (int t = 0; t < K * K; ++t) {
        const float v = warp_sum(acc[t]);
        if (lane == 0) red[t][warp] = v;
    }
    __syncthreads();
    for (int t = warp * TILE_W + lane; t < K * K; t += TILE_W * BLOCK_Y) {
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < BLOCK_Y; ++i) sum += red[t][i];
        partial[((long long)chunk * channels + c) * K * K + t] = sum;
    }
}

#define DW_WGRAD_COLUMNS(K, S)                                                                     \
    extern "C" __global__ void __launch_bounds__(TILE_W * BLOCK_Y) dw_weight_grad_columns_k##K##_s##S( \
        const float* x, const float* g, float* partial, int batch, int channels, int h, int wd,   \
        int ho, int wo, int pad_top, int pad_left, int chunks) {                                  \
        dw_weight_grad_columns<K, S>(x, g, partial, batch, channels, h, wd, ho, wo, pad_top,       \
                                     pad_left, chunks);                                           \
    }
DW_WGRAD_COLUMNS(3, 1) DW_WGRAD_COLUMNS(3, 2)
DW_WGRAD_COLUMNS(5, 1) DW_WGRAD_COLUMNS(5, 2)
DW_WGRAD_COLUMNS(7, 1) DW_WGRAD_COLUMNS(7, 2)

extern "C" __global__ void sum_chunks(const float* __restrict__ partial, float* __restrict__ out,
                                      int len, int chunks) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float acc = 0.f;
    for (int ch = 0; ch < chunks; ++ch) acc += partial[(long long)ch * len + i];
    out[i] = acc;
}

// ---------------------------------------------------------------------------------------------
// Squeeze-excite forward: pool -> FCs -> scale (three launches, [N, C] temporaries only).
// ---------------------------------------------------------------------------------------------

// One warp per (n, c) plane: mean of x (and, with `other`, the sum of x * other: the gate
// gradient of the backward pass). Lanes stride the plane, so loads are coalesced.
extern "C" __global__ void plane_reduce(const float* __restrict__ x, const float* __restrict__ other,
                                        float* __restrict__ mean, float* __restrict__ dot,
                                        long long planes, int hw) {
    const long long plane = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (plane >= planes) return;
    const float* p = x + plane * hw;
    float s = 0.f, d = 0.f;
    if (other) {
        const float* q = other + plane * hw;
        for (int i = lane; i < hw; i += 32) {
            const float v = __ldg(p + i);
            s += v;
            d += v * __ldg(q + i);
        }
    } else {
        for (int i = lane; i < hw; i += 32) s += __ldg(p + i);
    }
    s = warp_sum(s);
    if (other) d = warp_sum(d);
    if (lane == 0) {
        mean[plane] = s / (float)hw;
        if (other) dot[plane] = d;
    }
}

// One block per sample: hidden = act(W1 pooled + b1), gate = sigmoid(W2 hidden + b2), with the
// packed operands `reduce [R, C + 1]`, `expand [C, R + 1]`. Dynamic shared memory: C + R floats.
extern "C" __global__ void se_gates(const float* __restrict__ pooled, const float* __restrict__ reduce,
                                    const float* __restrict__ expand, float* __restrict__ gates,
                                    int c, int r, int act) {
    FAIRNAS_DYNAMIC_SHARED(float, smem);
    float* p = smem;
    float* hidden = smem + c;
    const long long n = blockIdx.x;
    for (int i = threadIdx.x; i < c; i += blockDim.x) p[i] = pooled[n * c + i];
    __syncthreads();
    for (int j = threadIdx.x; j < r; j += blockDim.x) {
        const float* row = reduce + (long long)j * (c + 1);
        float z = 0.f;
        for (int i = 0; i < c; ++i) z += row[i] * p[i];
        hidden[j] = activate(z + row[c], act);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float* row = expand + (long long)i * (r + 1);
        float z = 0.f;
        for (int j = 0; j < r; ++j) z += row[j] * hidden[j];
        gates[n * c + i] = activate(z + row[r], 4);
    }
}

// y = x * gate[plane] (+ bias[plane] when given: the SE input gradient dy * gate + d_pool / HW).
extern "C" __global__ void scale_planes(const float* __restrict__ x, const float* __restrict__ gate,
                                        const float* __restrict__ bias, float* __restrict__ y,
                                        long long total, int hw) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long plane = i / hw;
        float v = __ldg(x + i) * __ldg(gate + plane);
        if (bias) v += __ldg(bias + plane);
        y[i] = v;
    }
}
