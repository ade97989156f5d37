//! The f32 register-tiled kernel behind [`crate::folded_pointwise`] on AVX-512 CPUs: a tile of
//! up to 12 output channels x 32 pixels accumulates in 24 vector registers over the whole input
//! depth, then gets its shift, activation and residual before it is stored, once.
//!
//! Why not a general GEMM: the MBConv pointwise convs are short and wide (depth 16-1152, an
//! output plane of 49-12544 pixels per image). A GEMM library packs both operands into panels
//! for every call and writes its result before any epilogue can run; at depth 16-40 the packing
//! and the extra pass over the output cost as much as the multiply-adds (`perf`: gemm's packing
//! and 16x6 AVX2 kernels held FairNAS-A's pointwise convs to ~2/3 of the machine's matmul peak).
//! Here nothing is packed: the input rows are contiguous pixels already (NCHW), so each depth
//! step loads two vectors of pixels and broadcasts 12 weights straight from the `[O, C + 1]`
//! folded weight matrix.
//!
//! Every output element is one FMA chain over the input channels in order, starting from zero,
//! then `+ shift`, the activation and `+ residual`: the bits do not depend on the tiling, the
//! block split or the thread count (tested against a scalar `mul_add` loop).

use std::arch::x86_64::*;

use crate::Activation;

/// Output channels per register tile (the accumulators are `TILE_ROWS x 2` vectors).
pub(crate) const TILE_ROWS: usize = 12;
/// Pixels per register tile: two 16-lane vectors.
const TILE_COLS: usize = 32;

/// One block of a folded pointwise conv: rows `0..rows` x columns `0..cols` of the output,
/// each pointer at the block's first element.
#[derive(Clone, Copy)]
pub(crate) struct Block<T = f32> {
    /// Output channels in the block and input channels (the FMA chain's length).
    pub rows: usize,
    pub depth: usize,
    pub cols: usize,
    /// `[rows, depth + 1]`, row stride `weight_stride`: the folded weights, then the shift.
    pub weights: *const T,
    pub weight_stride: usize,
    /// `[depth, cols]`, row stride `input_stride`.
    pub input: *const T,
    pub input_stride: usize,
    /// When not null, `[depth]`: input row `k` is multiplied by `input_scale[k]` as it is
    /// loaded (a squeeze-excite gate applied on the fly), before the FMA.
    pub input_scale: *const T,
    /// `[rows, cols]`, row stride `output_stride`; `residual`, when not null, has the same
    /// shape and strides and is added after the activation.
    pub output: *mut T,
    pub residual: *const T,
    pub output_stride: usize,
}

/// Whether this CPU runs [`run_block`] (it needs AVX-512F); the crate asks
/// `simd::avx512_allowed`, which also honours the tests' cap.
#[cfg(test)]
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// Computes `act(W' x + shift) (+ residual)` for the block, tile by tile.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]). Every pointer must address its matrix as
/// [`Block`] describes, inside one allocation; the output must not overlap the other operands.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn run_block(block: Block, activation: Activation) {
    let mut j = 0;
    while j < block.cols {
        let cols = TILE_COLS.min(block.cols - j);
        let mut row = 0;
        while row < block.rows {
            let rows = TILE_ROWS.min(block.rows - row);
            // SAFETY: the tile is rows `row .. row + rows` x columns `j .. j + cols` of the
            // block, inside it; the caller's guarantees cover the block.
            unsafe { run_tile(block, row, j, rows, cols, activation) };
            row += rows;
        }
        j += cols;
    }
}

/// Dispatches one tile to the kernel monomorphised for its row count and vector count.
///
/// # Safety
/// As for [`run_block`], with the tile inside the block, `1 <= rows <= 12`, `1 <= cols <= 32`.
#[target_feature(enable = "avx512f")]
unsafe fn run_tile(b: Block, row: usize, j: usize, rows: usize, cols: usize, activation: Activation) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match (rows, cols > 16, !b.input_scale.is_null()) {
                $(
                    ($r, true, false) => tile::<$r, 2, false>(b, row, j, cols, activation),
                    ($r, false, false) => tile::<$r, 1, false>(b, row, j, cols, activation),
                    ($r, true, true) => tile::<$r, 2, true>(b, row, j, cols, activation),
                    ($r, false, true) => tile::<$r, 1, true>(b, row, j, cols, activation),
                )*
                _ => unreachable!("tile of {rows} rows"),
            }
        };
    }
    // SAFETY: as the caller guarantees; `tile` gets the same tile.
    unsafe { dispatch!(1 2 3 4 5 6 7 8 9 10 11 12) }
}

/// The lanes of a row segment of `cols` pixels that vector `v` covers.
#[inline]
fn lane_mask(cols: usize, v: usize) -> __mmask16 {
    let lanes = cols.saturating_sub(16 * v).min(16);
    ((1u32 << lanes) - 1) as __mmask16
}

/// `ROWS` output channels x `VECS * 16` pixels (the last `VECS * 16 - cols` lanes masked off).
///
/// # Safety
/// As for [`run_tile`], with `cols <= VECS * 16`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const ROWS: usize, const VECS: usize, const SCALED: bool>(
    b: Block,
    row: usize,
    j: usize,
    cols: usize,
    activation: Activation,
) {
    let mut masks = [0 as __mmask16; VECS];
    for (v, m) in masks.iter_mut().enumerate() {
        *m = lane_mask(cols, v);
    }
    let weights = b.weights.wrapping_add(row * b.weight_stride);
    // SAFETY: as the caller guarantees, for the same tile.
    let acc = unsafe { accumulate::<ROWS, VECS, SCALED>(b, row, j, &masks) };
    let (zero, one, six) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0), _mm512_set1_ps(6.0));
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the shift column (`depth`) of weight row `row + r`.
        let shift = _mm512_set1_ps(unsafe { *weights.add(r * b.weight_stride + b.depth) });
        let at = (row + r) * b.output_stride + j;
        for v in 0..VECS {
            let mut z = _mm512_add_ps(acc[v], shift);
            // `max(0, z)` / `min(6, .)` return their second operand when it is NaN, so NaN
            // propagates, as in `Activation::apply`; the others are its operations in its order.
            z = match activation {
                Activation::Identity => z,
                Activation::Relu => _mm512_max_ps(zero, z),
                Activation::Relu6 => _mm512_min_ps(six, _mm512_max_ps(zero, z)),
                Activation::Swish => _mm512_div_ps(z, _mm512_add_ps(one, exp(negate(z)))),
                Activation::Sigmoid => _mm512_div_ps(one, _mm512_add_ps(one, exp(negate(z)))),
            };
            if !b.residual.is_null() {
                // SAFETY: the residual's element of this output, inside the mask.
                let r = unsafe { _mm512_maskz_loadu_ps(masks[v], b.residual.add(at + 16 * v)) };
                z = _mm512_add_ps(z, r);
            }
            // SAFETY: output row `row + r`, the tile's columns under the mask.
            unsafe { _mm512_mask_storeu_ps(b.output.add(at + 16 * v), masks[v], z) };
        }
    }
}

/// `-x`, by flipping the sign bit (as Rust's `-x`).
#[target_feature(enable = "avx512f")]
#[inline]
fn negate(x: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)))
}

/// [`crate::activation::exp_f32`] on 16 lanes: the same operations in the same order (no
/// FMA contraction), so every lane has the scalar function's bits.
#[target_feature(enable = "avx512f")]
#[inline]
fn exp(x: __m512) -> __m512 {
    use crate::activation::exp_f32_constants::*;
    let c = |v: f32| _mm512_set1_ps(v);
    let (add, sub, mul) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps);
    // The clamp, NaN kept: max/min return their second operand when it is NaN.
    let x = _mm512_min_ps(c(CLAMP.1), _mm512_max_ps(c(CLAMP.0), x));
    let round = c(ROUND);
    let n = sub(add(mul(x, c(LOG2E)), round), round);
    let r = sub(sub(x, mul(n, c(LN2_HI))), mul(n, c(LN2_LO)));
    let mut p = c(POLY[0]);
    for &k in &POLY[1..] {
        p = add(mul(p, r), c(k));
    }
    let er = add(add(mul(p, mul(r, r)), r), c(1.0));
    let two_n = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)));
    mul(er, _mm512_castsi512_ps(two_n))
}

/// The tile's FMA chains over the whole depth. A function of its own (never inlined) so that
/// the accumulators stay in registers: inlined, the epilogue's loops index them at run time
/// and LLVM then stores all 24 back to the stack on every depth step.
///
/// # Safety
/// As for [`tile`].
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn accumulate<const ROWS: usize, const VECS: usize, const SCALED: bool>(
    b: Block,
    row: usize,
    j: usize,
    masks: &[__mmask16; VECS],
) -> [[__m512; VECS]; ROWS] {
    let weights = b.weights.wrapping_add(row * b.weight_stride);
    let input = b.input.wrapping_add(j);
    let mut acc = [[_mm512_setzero_ps(); VECS]; ROWS];
    for k in 0..b.depth {
        let x_row = input.wrapping_add(k * b.input_stride);
        let mut xs = [_mm512_setzero_ps(); VECS];
        for (v, x) in xs.iter_mut().enumerate() {
            // SAFETY: input row `k`, columns `j + 16 v ..`: the mask keeps the load inside the
            // tile's `cols` columns (masked-off lanes are not read, so they cannot fault).
            *x = unsafe { _mm512_maskz_loadu_ps(masks[v], x_row.add(16 * v)) };
        }
        if SCALED {
            // SAFETY: `input_scale` has `depth` elements when set (SCALED), and k < depth.
            let scale = _mm512_set1_ps(unsafe { *b.input_scale.add(k) });
            for x in xs.iter_mut() {
                *x = _mm512_mul_ps(*x, scale);
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: weight row `row + r` (< rows), column `k` (< depth).
            let w = _mm512_set1_ps(unsafe { *weights.add(r * b.weight_stride + k) });
            for v in 0..VECS {
                acc[v] = _mm512_fmadd_ps(w, xs[v], acc[v]);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one element at a time: an FMA chain over the channels in order from
    /// zero, `+ shift`, the activation, `+ residual`.
    fn reference(
        (rows, depth, cols): (usize, usize, usize),
        weights: &[f32],
        input: &[f32],
        residual: Option<&[f32]>,
        activation: Activation,
    ) -> Vec<f32> {
        let mut out = vec![0f32; rows * cols];
        for o in 0..rows {
            for j in 0..cols {
                let mut acc = 0f32;
                for k in 0..depth {
                    acc = weights[o * (depth + 1) + k].mul_add(input[k * cols + j], acc);
                }
                let z = activation.apply(acc + weights[o * (depth + 1) + depth]);
                out[o * cols + j] = z + residual.map_or(0., |r| r[o * cols + j]);
            }
        }
        out
    }

    fn wave(len: usize, rate: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * rate).sin()).collect()
    }

    /// Bit for bit the scalar definition, for every tile shape (rows 1-12 and past one tile,
    /// full and partial vectors), every activation, with and without a residual, and with
    /// input rows scaled on load (bit for bit a pre-scaled input: the gated tensor).
    #[test]
    fn gives_the_bits_of_the_scalar_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F, the kernel's only build");
            return;
        }
        for (rows, depth, cols) in
            [(1, 1, 1), (5, 7, 16), (12, 16, 32), (13, 40, 33), (30, 9, 70), (7, 200, 49)]
        {
            let weights = wave(rows * (depth + 1), 0.37);
            let input = wave(depth * cols, 0.11);
            let residual = wave(rows * cols, 0.53);
            // Squeeze-excite gates in (0, 1), one per input row.
            let gates: Vec<f32> = wave(depth, 0.71).iter().map(|g| 0.5 + 0.4 * g).collect();
            for activation in [
                Activation::Identity,
                Activation::Relu,
                Activation::Relu6,
                Activation::Swish,
                Activation::Sigmoid,
            ] {
                for (res, scale) in [(None, None), (Some(&residual[..]), None), (None, Some(&gates[..]))] {
                    let scaled: Vec<f32> = match scale {
                        Some(g) => input.iter().enumerate().map(|(i, &x)| x * g[i / cols]).collect(),
                        None => input.clone(),
                    };
                    let want = reference((rows, depth, cols), &weights, &scaled, res, activation);
                    // NaN-filled, so an element the kernel misses shows.
                    let mut got = vec![f32::NAN; rows * cols];
                    let block = Block {
                        rows,
                        depth,
                        cols,
                        weights: weights.as_ptr(),
                        weight_stride: depth + 1,
                        input: input.as_ptr(),
                        input_stride: cols,
                        input_scale: scale.map_or(std::ptr::null(), |s| s.as_ptr()),
                        output: got.as_mut_ptr(),
                        residual: res.map_or(std::ptr::null(), |r| r.as_ptr()),
                        output_stride: cols,
                    };
                    // SAFETY: checked just above that the CPU has AVX-512F; the block
                    // describes the vectors above exactly.
                    unsafe { run_block(block, activation) };
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(
                        bits(&got) == bits(&want),
                        "{:?} {activation} residual {} scaled {}",
                        (rows, depth, cols),
                        res.is_some(),
                        scale.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn nan_propagates_through_the_clamping_activations() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F, the kernel's only build");
            return;
        }
        let weights = [1f32, 0.];
        let input = [f32::NAN, 1., -1., 9.];
        for activation in [Activation::Relu, Activation::Relu6] {
            let mut got = [0f32; 4];
            let block = Block {
                rows: 1,
                depth: 1,
                cols: 4,
                weights: weights.as_ptr(),
                weight_stride: 2,
                input: input.as_ptr(),
                input_stride: 4,
                input_scale: std::ptr::null(),
                output: got.as_mut_ptr(),
                residual: std::ptr::null(),
                output_stride: 4,
            };
            // SAFETY: AVX-512F checked above; the block describes the arrays above.
            unsafe { run_block(block, activation) };
            assert!(got[0].is_nan(), "{activation}: {got:?}");
            let top = if activation == Activation::Relu6 { 6. } else { 9. };
            assert_eq!(&got[1..], &[1., 0., top], "{activation}");
        }
    }
}
