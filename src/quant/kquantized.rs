//! One linear quantized through a K grid, as ggml stores it: what the K quantizers
//! (`kgrid`, `kgrid_sym`) produce and the packer writes.

use candle_core::{DType, Result};

use super::kspec::KGrid;
use super::quantizer::GroupedWeight;

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

/// A grouped weight on the host: each sub-block's values, and the max and min per sub-block.
pub(super) type HostGroups = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);

/// `gw` on the host in f32 for a K quantizer: the sub-blocks' values and their max and min;
/// refused unless its groups are `k`'s sub-blocks in whole super-blocks.
pub(super) fn host_groups(k: KGrid, gw: &GroupedWeight) -> Result<HostGroups> {
    let w: Vec<Vec<f32>> = gw.w.to_dtype(DType::F32)?.to_vec2()?;
    if w.first().map(Vec::len) != Some(k.sub_len()) || !w.len().is_multiple_of(k.subs()) {
        candle_core::bail!("{}: not whole super-blocks", k.name());
    }
    let xmax: Vec<f32> = gw.xmax.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let xmin: Vec<f32> = gw.xmin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok((w, xmax, xmin))
}
