//! Inference-time pointwise (1x1) convolution with eval-mode BN folded into its weights and the
//! rest of the layer in the GEMM's epilogue: `act(W' x + shift) (+ residual)`, one node, one
//! pass over the output.
//!
//! Why: as separate ops, a pointwise conv + BN + activation (+ the block's residual add) writes
//! the output, reads and writes it again for the affine and activation, and reads it once more
//! with the residual into a third buffer; each pass over an early layer's `[32, 96, 112, 112]`
//! activation (154 MB) costs as much as the GEMM itself. Here BN's scale lives in the weights
//! ([`fold_batch_norm`], done once at load time) and each image's output is produced in column
//! blocks small enough to stay in cache between the GEMM and the epilogue.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::activation::with_activation;
use crate::layout::{contiguous_slice, dispatch_f32_f64};
use crate::pointwise::{matmul_into_rows, GemmElement};
use crate::Activation;

/// `[N, C, H, W] x [O, C + 1] -> [N, O, H, W]`: `act(W' x + shift)`, the packed operand being
/// `[W' | shift]` from [`fold_batch_norm`]; with a third operand `[N, O, H, W]`, that tensor is
/// added after the activation (a block's residual, `project(h) + x`). With `gate` `[N, C]`,
/// the input is `x * gate` (broadcast over each plane: a squeeze-excite gate from
/// [`crate::squeeze_excite_gates`]), applied as the kernel loads it, so the gated tensor is
/// never written. Forward only.
#[derive(Debug, Clone)]
pub struct FoldedPointwise {
    pub activation: Activation,
    pub gate: Option<Tensor>,
}

/// Output elements of one epilogue block: its GEMM output stays in the L2 cache (256 KB of f32)
/// until the epilogue has read it.
const BLOCK_ELEMENTS: usize = 64 * 1024;

/// Columns per block for `rows` output channels: a multiple of 16 (whole vectors), at least 64
/// (a GEMM narrower than that is mostly packing), and no more than the plane.
fn block_columns(rows: usize, plane: usize) -> usize {
    let cols = (BLOCK_ELEMENTS / rows.max(1)) / 16 * 16;
    cols.max(64).min(plane.max(1))
}

/// A pointer the parallel blocks write through; each block owns a disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);
// SAFETY: the blocks that share it write disjoint elements (see `forward_typed`), and the
// buffer outlives the parallel loop.
unsafe impl<T> Send for OutPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// The element `offset` places in (a method, so that closures capture the whole `Sync`
    /// wrapper rather than its raw-pointer field). Computing the address is safe; writing
    /// through it is what the callers' SAFETY comments cover.
    fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// Output channels one register tile of the tiled kernel holds: row blocks are multiples of it.
#[cfg(target_arch = "x86_64")]
use crate::pointwise_tile::TILE_ROWS;
#[cfg(not(target_arch = "x86_64"))]
const TILE_ROWS: usize = 1;

/// The operands of one output block, for the register-tiled kernel.
#[cfg(target_arch = "x86_64")]
type TiledBlock<T> = crate::pointwise_tile::Block<T>;
#[cfg(not(target_arch = "x86_64"))]
type TiledBlock<T> = std::marker::PhantomData<T>;

pub(crate) trait Element: GemmElement + num_traits::Float {
    /// Whether [`Element::run_tiled`] runs on this CPU (f32 with AVX-512F); otherwise the
    /// blocks go through the GEMM library and a separate epilogue.
    fn has_tiled_kernel() -> bool {
        false
    }

    /// # Safety
    /// [`Element::has_tiled_kernel`] must be true, and the block must satisfy
    /// `pointwise_tile::run_block`'s contract.
    unsafe fn run_tiled(_block: TiledBlock<Self>, _activation: Activation) {
        unreachable!("no tiled pointwise kernel for this type")
    }
}

impl Element for f32 {
    #[cfg(target_arch = "x86_64")]
    fn has_tiled_kernel() -> bool {
        crate::simd::avx512_allowed()
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn run_tiled(block: TiledBlock<f32>, activation: Activation) {
        // SAFETY: `has_tiled_kernel` (AVX-512F present) and the block's extents are the
        // caller's guarantees.
        unsafe { crate::pointwise_tile::run_block(block, activation) }
    }
}
impl Element for f64 {}

fn forward_typed<T: Element>(
    (activation, gate): (Activation, Option<&Tensor>),
    (xs, xl): (&CpuStorage, &Layout),
    (ps, pl): (&CpuStorage, &Layout),
    residual: Option<(&CpuStorage, &Layout)>,
) -> Result<(Vec<T>, Shape)> {
    let (n, c, h, w) = match xl.dims() {
        &[n, c, h, w] => (n, c, h, w),
        d => candle_core::bail!("folded pointwise conv: input must be [N, C, H, W], got {d:?}"),
    };
    let o = match pl.dims() {
        &[o, packed] if packed == c + 1 => o,
        d => candle_core::bail!(
            "folded pointwise conv: packed weight must be [O, {}] ([O, C] weights and a shift column) \
             for a {c}-channel input, got {d:?}",
            c + 1
        ),
    };
    if let Some((_, rl)) = residual {
        if rl.dims() != [n, o, h, w] {
            candle_core::bail!(
                "folded pointwise conv: residual must be the output's shape {:?}, got {:?}",
                [n, o, h, w],
                rl.dims()
            );
        }
    }
    let x = contiguous_slice::<T>(xs, xl)?;
    let packed = contiguous_slice::<T>(ps, pl)?;
    let residual = residual.map(|(rs, rl)| contiguous_slice::<T>(rs, rl)).transpose()?;
    let gate_storage = gate.map(|g| g.storage_and_layout());
    let gate = match &gate_storage {
        None => None,
        Some((storage, layout)) => {
            if layout.dims() != [n, c] {
                candle_core::bail!("folded pointwise conv: gate must be [{n}, {c}], got {:?}", layout.dims());
            }
            match &**storage {
                candle_core::Storage::Cpu(cpu) => Some(contiguous_slice::<T>(cpu, layout)?),
                _ => candle_core::bail!("folded pointwise conv: the gate must be on the CPU, as the input"),
            }
        }
    };
    let out =
        folded_forward(activation, (&x, (n, c, h * w)), (&packed, o), residual.as_deref(), gate.as_deref());
    Ok((out, Shape::from((n, o, h, w))))
}

/// How [`folded_forward`] cuts its output into blocks: `cols`-wide column blocks
/// (`per_image` per image, `column_blocks` in all), each split into `row_blocks` chunks of
/// `row_chunk` output channels.
struct Blocking {
    cols: usize,
    per_image: usize,
    column_blocks: usize,
    row_chunk: usize,
    row_blocks: usize,
}

fn blocking(tiled: bool, (n, o, hw): (usize, usize, usize), threads: usize) -> Blocking {
    let mut cols = block_columns(o, hw);
    if tiled && n * hw.div_ceil(cols) < 4 * threads {
        // A few big blocks do not share out evenly (the stem at batch 1 was 7 blocks on 2
        // threads): narrower ones, in whole 32-column tiles, to give each thread several.
        let per_image = (4 * threads).div_ceil(n);
        cols = cols.min(hw.div_ceil(per_image).next_multiple_of(32)).min(hw.max(1));
    }
    let per_image = hw.div_ceil(cols);
    let column_blocks = n * per_image;
    // The tiled kernel has no threads of its own: with too few column blocks to go round (a
    // small late-layer plane at batch 1), the output channels are split too, in whole tiles.
    let row_chunk = if tiled && column_blocks < 2 * threads {
        let parts = (2 * threads).div_ceil(column_blocks);
        o.div_ceil(parts).next_multiple_of(TILE_ROWS).min(o)
    } else {
        o
    };
    let row_blocks = o.div_ceil(row_chunk);
    Blocking { cols, per_image, column_blocks, row_chunk, row_blocks }
}

/// The op on plain slices: `x` `[n, c, hw]`, `packed` `[o, c + 1]`, `residual` `[n, o, hw]`
/// (shapes checked by the callers), returning `[n, o, hw]`. Also the GEMM half of
/// [`crate::dense_conv::folded_dense_conv2d`], on its column matrices.
pub(crate) fn folded_forward<T: Element>(
    activation: Activation,
    (x, (n, c, hw)): (&[T], (usize, usize, usize)),
    (packed, o): (&[T], usize),
    residual: Option<&[T]>,
    gate: Option<&[T]>,
) -> Vec<T> {
    assert_eq!((x.len(), packed.len()), (n * c * hw, o * (c + 1)), "folded pointwise operands");
    let total = n * o * hw;
    assert!(residual.is_none_or(|r| r.len() == total), "folded pointwise residual");
    assert!(gate.is_none_or(|g| g.len() == n * c), "folded pointwise gate");
    let mut out: Vec<T> = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let tiled = T::has_tiled_kernel();
    // The GEMM path cannot scale on load: it gets the gated input, written out.
    let gated: Vec<T>;
    let x = match gate {
        Some(g) if !tiled => {
            gated = x
                .par_chunks(hw.max(1))
                .zip(g.par_iter())
                .flat_map_iter(|(p, &g)| p.iter().map(move |&v| v * g))
                .collect();
            &gated[..]
        }
        _ => x,
    };
    let threads = rayon::current_num_threads();
    let Blocking { cols, per_image, column_blocks, row_chunk, row_blocks } =
        blocking(tiled, (n, o, hw), threads);
    let blocks = column_blocks * row_blocks;
    // Too few blocks to go round for the GEMM path: let each GEMM use the threads instead.
    let inner = if blocks >= threads { Parallelism::None } else { Parallelism::Rayon(threads) };
    let dst = OutPtr(out.as_mut_ptr());
    let run_block = |block: usize| {
        let (column_block, row_block) = (block / row_blocks, block % row_blocks);
        let (image, j0) = (column_block / per_image, (column_block % per_image) * cols);
        let width = cols.min(hw - j0);
        let row0 = row_block * row_chunk;
        let rows = row_chunk.min(o - row0);
        let first = (image * o + row0) * hw + j0;
        let src = &x[image * c * hw + j0..];
        if tiled {
            #[cfg(target_arch = "x86_64")]
            let block = TiledBlock {
                rows,
                depth: c,
                cols: width,
                weights: packed[row0 * (c + 1)..].as_ptr(),
                weight_stride: c + 1,
                input: src.as_ptr(),
                input_stride: hw,
                input_scale: gate.map_or(std::ptr::null(), |g| g[image * c..].as_ptr()),
                output: dst.at(first),
                residual: residual.map_or(std::ptr::null(), |r| r[first..].as_ptr()),
                output_stride: hw,
            };
            #[cfg(not(target_arch = "x86_64"))]
            let block = std::marker::PhantomData;
            // SAFETY: `tiled` is `has_tiled_kernel()`. The block is rows `row0 .. row0 + rows`
            // of image `image`'s `[o, hw]` output, columns `j0 .. j0 + width`: inside the
            // `total`-element allocation and disjoint from every other block's; the residual
            // has the output's layout. The packed weight rows from `row0` have stride `c + 1`
            // with the shift in column `c`; `src` starts at column `j0` of the image's `[c, hw]`
            // input (row stride `hw`), and `width` columns stay in its rows.
            unsafe { T::run_tiled(block, activation) };
            return;
        }
        // SAFETY: as above, for the GEMM's `rows x width` output block (here `row0 == 0`,
        // `rows == o`) and its `[o, c + 1]`-strided weight operand.
        unsafe {
            matmul_into_rows(
                (rows, width, c),
                (dst.at(first), hw as isize),
                false,
                packed[row0 * (c + 1)..].as_ptr(),
                ((c + 1) as isize, 1),
                src.as_ptr(),
                (hw as isize, 1),
                inner,
            )
        };
        crate::simd::wide(
            #[inline(always)]
            || {
                for row in 0..rows {
                    let shift = packed[(row0 + row) * (c + 1) + c];
                    let at = first + row * hw;
                    // SAFETY: the GEMM above initialised exactly these `width` elements, which only
                    // this block touches.
                    let d = unsafe { std::slice::from_raw_parts_mut(dst.at(at), width) };
                    with_activation!(activation, T, act => match residual {
                        Some(r) => {
                            for (d, &r) in d.iter_mut().zip(&r[at..at + width]) {
                                *d = act(*d + shift) + r;
                            }
                        }
                        None => {
                            for d in d.iter_mut() {
                                *d = act(*d + shift);
                            }
                        }
                    })
                }
            },
        );
    };
    if blocks >= threads {
        (0..blocks).into_par_iter().for_each(run_block);
    } else {
        (0..blocks).for_each(run_block);
    }
    // SAFETY: the blocks cover every (image, row, column) of the output exactly once, and each
    // wrote its elements (GEMM, then epilogue).
    unsafe { out.set_len(total) };
    out
}

impl CustomOp2 for FoldedPointwise {
    fn name(&self) -> &'static str {
        "fairnas-folded-pointwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "folded pointwise conv",
            &[s1.dtype(), s2.dtype()],
            || forward_typed::<f32>((self.activation, self.gate.as_ref()), (s1, l1), (s2, l2), None),
            || forward_typed::<f64>((self.activation, self.gate.as_ref()), (s1, l1), (s2, l2), None),
        )
    }
}

impl CustomOp3 for FoldedPointwise {
    fn name(&self) -> &'static str {
        "fairnas-folded-pointwise-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_f32_f64(
            "folded pointwise conv",
            &[s1.dtype(), s2.dtype(), s3.dtype()],
            || {
                forward_typed::<f32>(
                    (self.activation, self.gate.as_ref()),
                    (s1, l1),
                    (s2, l2),
                    Some((s3, l3)),
                )
            },
            || {
                forward_typed::<f64>(
                    (self.activation, self.gate.as_ref()),
                    (s1, l1),
                    (s2, l2),
                    Some((s3, l3)),
                )
            },
        )
    }
}

/// `[W * scale | shift]` `[O, C + 1]`: a 1x1 conv weight `[O, C(, 1, 1)]` with eval-mode BN's
/// per-channel `scale` and `shift` `[O]` folded in, the operand of [`folded_pointwise`].
pub fn fold_batch_norm(weight: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let (o, c) = match weight.dims() {
        &[o, c] | &[o, c, 1, 1] => (o, c),
        d => candle_core::bail!("fold_batch_norm: expected a 1x1 conv weight [O, C(, 1, 1)], got {d:?}"),
    };
    let scaled = weight.reshape((o, c))?.broadcast_mul(&scale.reshape((o, 1))?)?;
    Tensor::cat(&[&scaled, &shift.reshape((o, 1))?], 1)
}

/// `act(W' x + shift)`, plus `residual` after the activation when given; `packed` from
/// [`fold_batch_norm`]. CPU only (the CUDA build keeps the separate ops).
pub fn folded_pointwise(
    x: &Tensor,
    packed: &Tensor,
    activation: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    folded_pointwise_gated(x, None, packed, activation, residual)
}

/// [`folded_pointwise`] of `x * gate` (`gate` `[N, C]` broadcast over each plane, e.g. from
/// [`crate::squeeze_excite_gates`]), without writing the gated tensor. CPU only.
pub fn folded_pointwise_gated(
    x: &Tensor,
    gate: Option<&Tensor>,
    packed: &Tensor,
    activation: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let op = FoldedPointwise { activation, gate: gate.cloned() };
    match residual {
        Some(r) => x.apply_op3_no_bwd(packed, r, &op),
        None => x.apply_op2_no_bwd(packed, &op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The unfused reference in f64: conv as a candle matmul, then `x * scale + shift`, the
    /// activation and the residual as separate candle ops.
    fn reference(
        x: &Tensor,
        weight: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        activation: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let o = weight.dim(0)?;
        let y = weight.reshape((o, c))?.broadcast_left(n)?.matmul(&x.reshape((n, c, h * w))?)?;
        let y = y.broadcast_mul(&scale.reshape((o, 1))?)?.broadcast_add(&shift.reshape((o, 1))?)?;
        let y = activation.forward(&y.reshape((n, o, h, w))?)?;
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }

    fn max_rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let got = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        got.iter().zip(&want).map(|(g, w)| (g - w).abs() / scale).fold(0., f64::max)
    }

    /// Every activation, with and without a residual, on planes narrower and wider than one
    /// block (and a batch smaller than the thread count), in f32 and f64, against the f64
    /// unfused graph.
    #[test]
    fn matches_the_unfused_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (n, c, o, h, w) in
            [(1, 7, 5, 3, 3), (3, 16, 96, 41, 37), (2, 40, 1280, 7, 7), (1, 24, 600, 15, 16)]
        {
            let x = Tensor::randn(0f64, 1., (n, c, h, w), &dev)?;
            let weight = Tensor::randn(0f64, 0.4, (o, c, 1, 1), &dev)?;
            let scale = Tensor::randn(0f64, 1., o, &dev)?;
            let shift = Tensor::randn(0f64, 1., o, &dev)?;
            let residual = Tensor::randn(0f64, 1., (n, o, h, w), &dev)?;
            for activation in [Activation::Identity, Activation::Relu6, Activation::Swish] {
                for res in [None, Some(&residual)] {
                    let want = reference(&x, &weight, &scale, &shift, activation, res)?;
                    let packed = fold_batch_norm(&weight, &scale, &shift)?;
                    let got = folded_pointwise(&x, &packed, activation, res)?;
                    let err = max_rel_err(&got, &want);
                    assert!(
                        err < 1e-12,
                        "f64 {:?} {activation} residual {}: {err}",
                        (n, c, o, h, w),
                        res.is_some()
                    );
                    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                    let packed32 = fold_batch_norm(&f(&weight), &f(&scale), &f(&shift))?;
                    let res32 = res.map(f);
                    let got = folded_pointwise(&f(&x), &packed32, activation, res32.as_ref())?;
                    let err = max_rel_err(&got, &want);
                    assert!(
                        err < 1e-5,
                        "f32 {:?} {activation} residual {}: {err}",
                        (n, c, o, h, w),
                        res.is_some()
                    );
                }
            }
        }
        Ok(())
    }

    /// Squeeze-excite's gates applied by the projection as it loads its input give the bits
    /// of squeeze-excite's gated tensor projected, in f32 and f64; a wrong gate shape is an
    /// error naming the expected one.
    #[test]
    fn gated_projection_equals_squeeze_excite_then_projection() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let (n, c, o, r) = (3, 40, 24, 10);
            let x = Tensor::randn(0f32, 1., (n, c, 9, 11), &dev)?.to_dtype(dtype)?;
            let reduce = Tensor::randn(0f32, 0.3, (r, c + 1), &dev)?.to_dtype(dtype)?;
            let expand = Tensor::randn(0f32, 0.3, (c, r + 1), &dev)?.to_dtype(dtype)?;
            let packed = Tensor::randn(0f32, 0.3, (o, c + 1), &dev)?.to_dtype(dtype)?;
            let residual = Tensor::randn(0f32, 1., (n, o, 9, 11), &dev)?.to_dtype(dtype)?;
            let gated = crate::squeeze_excite_packed(&x, &reduce, &expand, Activation::Swish)?;
            let gates = crate::squeeze_excite_gates(&x, &reduce, &expand, Activation::Swish)?;
            assert_eq!(gates.dims(), [n, c]);
            let want = folded_pointwise(&gated, &packed, Activation::Identity, Some(&residual))?;
            let got =
                folded_pointwise_gated(&x, Some(&gates), &packed, Activation::Identity, Some(&residual))?;
            let flat =
                |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(flat(&got), flat(&want), "{dtype:?}");
            let err = folded_pointwise_gated(&x, Some(&gates.t()?), &packed, Activation::Identity, None)
                .unwrap_err();
            assert!(err.to_string().contains("gate must be [3, 40]"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn strided_inputs_are_read_through_their_layout() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 9, 6, 8), &dev)?.transpose(2, 3)?;
        let weight = Tensor::randn(0f32, 0.4, (4, 9), &dev)?;
        let (scale, shift) = (Tensor::randn(0f32, 1., 4, &dev)?, Tensor::randn(0f32, 1., 4, &dev)?);
        let packed = fold_batch_norm(&weight, &scale, &shift)?;
        let got = folded_pointwise(&x, &packed, Activation::Relu, None)?;
        let want = folded_pointwise(&x.contiguous()?, &packed, Activation::Relu, None)?;
        assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn wrong_shapes_are_errors_that_say_what_was_expected() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 8, 4, 4), DType::F32, &dev)?;
        let packed = Tensor::zeros((3, 8), DType::F32, &dev)?;
        let err = folded_pointwise(&x, &packed, Activation::Identity, None).unwrap_err().to_string();
        assert!(err.contains("[O, 9]") && err.contains("[3, 8]"), "{err}");
        let packed = Tensor::zeros((3, 9), DType::F32, &dev)?;
        let residual = Tensor::zeros((1, 3, 4, 5), DType::F32, &dev)?;
        let err =
            folded_pointwise(&x, &packed, Activation::Identity, Some(&residual)).unwrap_err().to_string();
        assert!(err.contains("residual") && err.contains("[1, 3, 4, 5]"), "{err}");
        let err =
            fold_batch_norm(&Tensor::zeros((3, 8, 3, 3), DType::F32, &dev)?, &x, &x).unwrap_err().to_string();
        assert!(err.contains("1x1"), "{err}");
        Ok(())
    }
}
