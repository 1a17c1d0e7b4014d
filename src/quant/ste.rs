//! PyTorch's autograd semantics where candle's differ (apiq.md §1.5):
//! * `round` is half-to-even (candle's rounds half away from zero);
//! * rounding passes the gradient straight through (`round_ste`);
//! * `clamp` passes the gradient with factor 1 on the *inclusive* range and 0 outside
//!   (candle's `clamp` = maximum/minimum halves it at ties, which are common here because the
//!   clamped values are integers).

use candle_core::{DType, Result, Tensor};

/// Round half to even, without gradient.
pub fn round_ties_even(u: &Tensor) -> Result<Tensor> {
    let u = u.detach();
    let away = u.round()?;
    let frac = (&u - u.floor()?)?;
    let tie = frac.eq(0.5)?;
    let even = ((&u * 0.5)?.round()? * 2.0)?;
    tie.where_cond(&even, &away)
}

/// `u + stopgrad(round_ties_even(u) - u)`: forward rounds, backward is the identity.
pub fn round_ste(u: &Tensor) -> Result<Tensor> {
    let delta = (round_ties_even(u)? - u.detach())?;
    u + delta
}

/// Clamp whose gradient is 1 on `lo ≤ u ≤ hi` (inclusive) and 0 outside, as PyTorch's.
pub fn clamp_inclusive(u: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let d = u.detach();
    let inside = d.ge(lo)?.mul(&d.le(hi)?)?.to_dtype(u.dtype())?;
    let clamped = d.clamp(lo, hi)?;
    let outside = (1.0 - &inside)?;
    (u * &inside)? + (clamped * outside)?
}

/// `x` rounded to f16, the gradient passed straight through.
pub fn f16_ste(x: &Tensor) -> Result<Tensor> {
    let r = x.detach().to_dtype(DType::F16)?.to_dtype(x.dtype())?;
    x + (r - x.detach())?
}

/// `x` where it is not 0, else 1 (a divisor that is only used where `x` is not 0).
pub fn nonzero_or_one(x: &Tensor) -> Result<Tensor> {
    x + x.detach().eq(0.0)?.to_dtype(x.dtype())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn ties_go_to_even() {
        let t = Tensor::new(
            &[0.5f64, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 2.51, -3.7],
            &Device::Cpu,
        )
        .unwrap();
        let r: Vec<f64> = round_ties_even(&t).unwrap().to_vec1().unwrap();
        assert_eq!(r, vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 0.0, 3.0, -4.0]);
    }

    #[test]
    fn clamp_gradient_is_one_on_the_inclusive_range() {
        let v = Var::new(&[-1.0f64, 0.0, 1.5, 3.0, 4.0], &Device::Cpu).unwrap();
        let y = clamp_inclusive(v.as_tensor(), 0.0, 3.0).unwrap();
        assert_eq!(y.to_vec1::<f64>().unwrap(), vec![0.0, 0.0, 1.5, 3.0, 3.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f64> = g.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![0.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn ste_passes_gradient_through() {
        let v = Var::new(&[0.3f64, 2.5, -1.7], &Device::Cpu).unwrap();
        let y = round_ste(v.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f64>().unwrap(), vec![0.0, 2.0, -2.0]);
        let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            g.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
            vec![3.0, 3.0, 3.0]
        );
    }
}
