//! The fake quantizer's constants as its CPU reference (`fake_quant_op`) and its CUDA kernels
//! (`fake_quant.cu`, launched by `fake_quant_cuda`) both read them.

use super::quantizer::QuantSpec;

/// What the kernels need of the quantizer, in the layout of `fake_quant.cu`'s `QParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct QParams {
    pub qmax: f32,
    pub inv_div: f32,
    pub sym_zero: f32,
    pub symmetric: i32,
    pub zero_clamp: i32,
    pub zlo: f32,
    pub zhi: f32,
}

impl QParams {
    pub fn of(spec: &QuantSpec) -> QParams {
        let (zlo, zhi) = spec.zero_range.unwrap_or((0, 0));
        QParams {
            qmax: spec.qmax() as f32,
            inv_div: (1.0 / divisor(spec)) as f32,
            sym_zero: spec.sym_zero() as f32,
            symmetric: i32::from(spec.symmetric),
            zero_clamp: i32::from(spec.zero_range.is_some()),
            zlo: zlo as f32,
            zhi: zhi as f32,
        }
    }
}

/// What the scale's range is divided by: qmax, or the symmetric zero point.
pub fn divisor(spec: &QuantSpec) -> f64 {
    if spec.symmetric {
        spec.sym_zero()
    } else {
        spec.qmax()
    }
}
