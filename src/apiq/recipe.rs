//! The calibration recipe. `Default` is the released ApiQ command (apiq.md §3.1,
//! `scripts/quantize.sh`), asymmetric as the paper's results.

use clap::ValueEnum;
use serde::Serialize;

use crate::nn::compute::Precision;
use crate::quant::lora::LoraSpec;
use crate::quant::{KInit, QuantSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Method {
    /// Block by block (the released ApiQ-bw): each block's output matches the FP model's.
    #[value(name = "apiq-bw")]
    ApiqBw,
    /// Layer by layer (ApiQ-lw, paper §3.2): each linear's output matches the FP layer's.
    #[value(name = "apiq-lw")]
    ApiqLw,
    /// Plain round-to-nearest over each group's full range; no training, no LoRA.
    Rtn,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    pub method: Method,
    pub quant: QuantSpec,
    /// `None`: LWC only (`--no-lora`), or RTN.
    pub lora: Option<LoraSpec>,
    /// 20 in the released script.
    pub epochs: usize,
    /// LWC logits: lr 5e-3, decoupled weight decay 0.1.
    pub lwc_lr: f64,
    pub lwc_wd: f64,
    /// LoRA A, B: lr 5e-4, decoupled weight decay 0.1.
    pub lora_lr: f64,
    pub lora_wd: f64,
    /// `--aug_loss`: also match the FP block evaluated on the quantized input.
    pub aug_loss: bool,
    /// Calibration windows and their length (128 × 2048).
    pub nsamples: usize,
    pub seqlen: usize,
    /// Windows per step (`--batch_size`, 1 in the released command): a step's loss and
    /// gradient are the means over its windows, taken in order.
    #[serde(skip_serializing_if = "is_one")]
    pub batch: usize,
    /// ApiQ's default seed is 2.
    pub seed: u64,
    /// Operand precision of the trained block's matrix products.
    pub precision: Precision,
    /// The ggml type of a frozen base that only the LoRA trains over (the IQ formats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_base: Option<&'static str>,
    /// Where a K grid's clipping starts.
    #[serde(skip_serializing_if = "KInit::is_lwc")]
    pub k_init: KInit,
}

impl Default for Recipe {
    fn default() -> Recipe {
        Recipe {
            method: Method::ApiqBw,
            quant: QuantSpec {
                bits: 2,
                group_size: 64,
                symmetric: false,
                zero_range: None,
                kgrid: None,
            },
            lora: Some(LoraSpec {
                rank: 64,
                alpha: 16.0,
            }),
            epochs: 20,
            lwc_lr: 5e-3,
            lwc_wd: 0.1,
            lora_lr: 5e-4,
            lora_wd: 0.1,
            aug_loss: true,
            nsamples: 128,
            seqlen: 2048,
            batch: 1,
            seed: 2,
            precision: Precision::F32,
            frozen_base: None,
            k_init: KInit::Lwc,
        }
    }
}

/// Recipes of one window per step serialize as before the field existed: their resume states
/// and cached results stay valid.
fn is_one(n: &usize) -> bool {
    *n == 1
}

/// ApiQ-lw's learning rates as a multiple of bw's (the paper gives none for lw). Each lw group
/// gets as many steps as bw gives a whole block; at bw's rates the LoRA pairs cannot rebuild
/// SmolLM2's massive activation (blk.11) in the quick recipe: lw + LoRA 42,240 at 1×, 2,138
/// at 5× (bw + LoRA 2,226; CPU `--quick`, WikiText-2 c 512, 10 chunks).
pub const LW_LR_SCALE: f64 = 5.0;

impl Recipe {
    /// This recipe with `method`'s learning rates: bw's, or [`LW_LR_SCALE`] times them for lw.
    pub fn with_method_rates(self) -> Recipe {
        if self.method != Method::ApiqLw {
            return self;
        }
        Recipe {
            lwc_lr: self.lwc_lr * LW_LR_SCALE,
            lora_lr: self.lora_lr * LW_LR_SCALE,
            ..self
        }
    }

    /// A small recipe for demos and CI: 16 windows of 256 tokens, 2 epochs.
    pub fn quick() -> Recipe {
        Recipe {
            nsamples: 16,
            seqlen: 256,
            epochs: 2,
            ..Recipe::default()
        }
    }

    pub fn trains(&self) -> bool {
        self.method != Method::Rtn && self.epochs > 0
    }
}
