//! SGD with momentum, Nesterov and weight decay as two in-place passes per parameter.
//!
//! Why: written as candle ops, torch.optim.SGD's update is eight element-wise ops per
//! parameter, each allocating and writing a parameter-sized tensor (~4.5M floats on the
//! NAS-Bench-Macro supernet, every step). Here the momentum buffer and then the parameter are
//! updated in place with the same f32/f64 operations in the same order, so the results are the
//! candle formulation's bits (a test pins it).

use candle_core::{CpuStorage, InplaceOp3, Layout, Result, WithDType};

use crate::layout::contiguous_slice;

/// The update's constants (torch.optim.SGD's): `lr`, `momentum`, `weight_decay` (0 for
/// parameters that do not decay), `nesterov`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// In place on the momentum buffer: `buf = buf * momentum + (grad + param * weight_decay)`.
/// Sources: the gradient and the parameter (before its update).
#[derive(Debug, Clone, Copy)]
pub struct MomentumUpdate(pub SgdStep);

/// In place on the parameter: `param = param - d * lr` with `g = grad + param * weight_decay` and
/// `d = g + buf * momentum` (Nesterov), `buf` (momentum) or `g` (no momentum). Sources: the
/// gradient and the already updated momentum buffer (ignored without momentum).
#[derive(Debug, Clone, Copy)]
pub struct ParamUpdate(pub SgdStep);

trait SgdElement:
    WithDType + std::ops::Mul<Output = Self> + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self>
{
}
impl SgdElement for f32 {}
impl SgdElement for f64 {}

/// Updates the destination's elements (one contiguous run, `dl`) from the two sources, read
/// through their layouts and checked to have its element count.
fn run<T: SgdElement>(
    name: &str,
    (dst, dl): (&mut [T], &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    update: impl Fn(T, T, T) -> T,
) -> Result<()> {
    let Some((start, end)) = dl.contiguous_offsets() else {
        candle_core::bail!("{name}: the updated tensor must be contiguous")
    };
    let (a, b) = (contiguous_slice::<T>(s2, l2)?, contiguous_slice::<T>(s3, l3)?);
    if a.len() != end - start || b.len() != end - start {
        candle_core::bail!("{name}: {} elements updated from {} and {}", end - start, a.len(), b.len());
    }
    for ((d, &x), &y) in dst[start..end].iter_mut().zip(a.iter()).zip(b.iter()) {
        *d = update(*d, x, y);
    }
    Ok(())
}

fn dispatch(
    name: &str,
    (dst, dl): (&mut CpuStorage, &Layout),
    s2: (&CpuStorage, &Layout),
    s3: (&CpuStorage, &Layout),
    f32_update: impl Fn(f32, f32, f32) -> f32,
    f64_update: impl Fn(f64, f64, f64) -> f64,
) -> Result<()> {
    match (dst, s2.0, s3.0) {
        (CpuStorage::F32(d), CpuStorage::F32(_), CpuStorage::F32(_)) => {
            run(name, (d, dl), s2, s3, f32_update)
        }
        (CpuStorage::F64(d), CpuStorage::F64(_), CpuStorage::F64(_)) => {
            run(name, (d, dl), s2, s3, f64_update)
        }
        _ => candle_core::bail!("{name}: f32 or f64 tensors of one dtype expected"),
    }
}

/// `grad + param * weight_decay`, as candle computes `g + (p * wd)` (`p * wd` is its affine
/// `p * wd + 0`).
#[inline(always)]
fn decayed<T: SgdElement>(grad: T, param: T, wd: f64) -> T {
    if wd > 0.0 {
        grad + (param * T::from_f64(wd) + T::from_f64(0.0))
    } else {
        grad
    }
}

#[inline(always)]
fn scaled<T: SgdElement>(x: T, by: f64) -> T {
    x * T::from_f64(by) + T::from_f64(0.0)
}

impl InplaceOp3 for MomentumUpdate {
    fn name(&self) -> &'static str {
        "fairnas-sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let c = self.0;
        dispatch(
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |buf, g, p| scaled(buf, c.momentum) + decayed(g, p, c.weight_decay),
            |buf, g, p| scaled(buf, c.momentum) + decayed(g, p, c.weight_decay),
        )
    }
}

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "fairnas-sgd-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        fn direction<T: SgdElement>(c: SgdStep, g: T, buf: T) -> T {
            match (c.momentum > 0.0, c.nesterov) {
                (false, _) => g,
                (true, true) => g + scaled(buf, c.momentum),
                (true, false) => buf,
            }
        }
        let c = self.0;
        dispatch(
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |p, g, buf| p - scaled(direction(c, decayed(g, p, c.weight_decay), buf), c.lr),
            |p, g, buf| p - scaled(direction(c, decayed(g, p, c.weight_decay), buf), c.lr),
        )
    }
}
