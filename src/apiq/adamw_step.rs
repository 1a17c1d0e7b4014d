//! The constants of one AdamW step, shared by the optimizer (`adamw`) and the launcher of its
//! fused CUDA pass (`adamw_cuda`).

/// One step's constants, in the layout of `adamw.cu`'s `AdamWStep`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub decay: f32,
    pub scale_m: f32,
    pub scale_v: f32,
    pub grad_scale: f32,
}
