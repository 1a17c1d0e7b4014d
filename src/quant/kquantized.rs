//! One linear quantized through a K grid, as ggml stores it: what the K quantizers
//! (`kgrid`, `kgrid_sym`) produce and the packer writes.

use super::kspec::KGrid;

/// One linear through a K grid, as stored: per super-block f16 `d`, `dmin`; per sub-block the
/// codes `sc`, `mn`; per weight the code `q` and the value `d·sc·q − dmin·mn` (f32). The
/// symmetric grids have no mins (`dmin` and `mn` empty): the value is `d·sc·q`.
#[derive(Debug, Clone)]
pub struct KQuantized {
    pub grid: KGrid,
    /// f16 bits per super-block.
    pub d: Vec<u16>,
    pub dmin: Vec<u16>,
    /// Per sub-block, scale_min..=scale_max.
    pub sc: Vec<i8>,
    pub mn: Vec<u8>,
    /// One code per weight as ggml stores it, `q − code_min` (0..2^b), row-major `[out, in]`.
    pub codes: Vec<u8>,
    /// The values, row-major `[out, in]`.
    pub weight: Vec<f32>,
}
