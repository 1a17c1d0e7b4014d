//! Calibration inputs: model weights on the device, and the calibration token windows.

pub mod data;
pub mod load;
