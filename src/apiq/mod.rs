//! ApiQ calibration: the recipe, the quantized block and its training, the resume state.

pub mod adamw;
#[cfg(feature = "cuda")]
mod adamw_cuda;
mod adamw_step;
pub mod block_forward;
pub mod collective;
pub mod frozen;
pub mod imatrix;
pub mod kstart;
pub mod parallel;
#[cfg(feature = "nccl")]
pub mod parallel_nccl;
pub mod qblock;
pub mod recipe;
pub mod state;
pub mod step;
pub mod step_ops;
#[cfg(feature = "cuda")]
mod step_ops_cuda;
pub mod train;

#[cfg(test)]
mod gradcheck;
#[cfg(test)]
mod gradcheck_ksym;
