//! Resume state: after each block its learned parameters are saved (atomically) in a folder
//! beside the output, with the recipe that produced them. Re-running the same command replays
//! finished blocks from their saved parameters (no training) and continues with the next one,
//! so the output is byte-identical to an uninterrupted run.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::qblock::Learned;
use crate::atomic::AtomicFile;
use crate::nn::block::LINEARS;

pub struct State {
    dir: PathBuf,
}

/// A block's diagnostic MSEs (the RTN and LWC-only columns of the block table), saved beside
/// what it learned: a replay then costs only the FP targets, the requantization and the chain
/// advance, not the baselines' requantization, forwards or (with `--baselines`) training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diagnostics {
    pub mse_rtn: f64,
    pub mse_lwc: Option<f64>,
}

/// What a finished block saved.
pub struct Saved {
    pub learned: Vec<Learned>,
    /// `None` in the state of an older run, which did not save them.
    pub diagnostics: Option<Diagnostics>,
}

/// An MSE from the safetensors metadata, where [`State::save`] writes it in Rust's shortest
/// round-trip text: the value read back is the same f64, so a replayed block's line equals the
/// original's.
fn metadata_f64(v: &std::collections::HashMap<String, String>, key: &str) -> Option<f64> {
    v.get(key).and_then(|s| s.parse().ok())
}

/// `OUT.gguf` → `OUT.gguf.apiq-state/`.
pub fn dir_for(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".apiq-state");
    PathBuf::from(s)
}

impl State {
    /// Opens (or creates) the state folder for `out`. `fingerprint` identifies the run (recipe,
    /// model, calibration data): state of another run is refused rather than mixed in.
    pub fn open(out: &Path, fingerprint: &str) -> Result<State> {
        let dir = dir_for(out);
        let fp_path = dir.join("run.json");
        if fp_path.exists() {
            let old = std::fs::read_to_string(&fp_path)
                .with_context(|| format!("{}: cannot read", fp_path.display()))?;
            if old != fingerprint {
                bail!(
                    "{}: resume state of a different run (other model, data or flags); delete it to start over, or rerun the original command",
                    dir.display()
                );
            }
        } else {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("{}: cannot create resume state", dir.display()))?;
            let mut f = AtomicFile::create(&fp_path)?;
            f.write_all(fingerprint.as_bytes())?;
            f.commit()?;
        }
        Ok(State { dir })
    }

    fn block_path(&self, layer: usize) -> PathBuf {
        self.dir.join(format!("block-{layer:04}.safetensors"))
    }

    /// Whether block `layer` is saved.
    pub fn has(&self, layer: usize) -> bool {
        self.block_path(layer).exists()
    }

    pub fn load(&self, layer: usize) -> Result<Option<Saved>> {
        let p = self.block_path(layer);
        if !p.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: damaged resume state", p.display()))?;
        let get = |name: String| -> Result<Option<Vec<f32>>> {
            match st.tensor(&name) {
                Ok(t) => Ok(Some(
                    t.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )),
                Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
                Err(e) => bail!("{}: damaged resume state: {e}", p.display()),
            }
        };
        let mut out = Vec::with_capacity(LINEARS.len());
        for l in LINEARS {
            let lora = match (get(format!("{l}.lora_a"))?, get(format!("{l}.lora_b"))?) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            };
            out.push(Learned {
                gamma: get(format!("{l}.gamma"))?,
                beta: get(format!("{l}.beta"))?,
                lora,
            });
        }
        let meta = SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default();
        let diagnostics = metadata_f64(&meta, "mse_rtn").map(|mse_rtn| Diagnostics {
            mse_rtn,
            mse_lwc: metadata_f64(&meta, "mse_lwc"),
        });
        Ok(Some(Saved {
            learned: out,
            diagnostics,
        }))
    }

    pub fn save(&self, layer: usize, learned: &[Learned], diagnostics: &Diagnostics) -> Result<()> {
        let mut named: Vec<(String, Vec<u8>)> = Vec::new();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for (l, p) in LINEARS.iter().zip(learned) {
            if let (Some(g), Some(b)) = (&p.gamma, &p.beta) {
                named.push((format!("{l}.gamma"), bytes(g)));
                named.push((format!("{l}.beta"), bytes(b)));
            }
            if let Some((a, b)) = &p.lora {
                named.push((format!("{l}.lora_a"), bytes(a)));
                named.push((format!("{l}.lora_b"), bytes(b)));
            }
        }
        let views = named
            .iter()
            .map(|(n, b)| {
                Ok((
                    n.clone(),
                    TensorView::new(Dtype::F32, vec![b.len() / 4], b)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = std::collections::HashMap::from([(
            "mse_rtn".to_string(),
            diagnostics.mse_rtn.to_string(),
        )]);
        if let Some(lwc) = diagnostics.mse_lwc {
            meta.insert("mse_lwc".to_string(), lwc.to_string());
        }
        let data = safetensors::serialize(views, Some(meta))?;
        let p = self.block_path(layer);
        let mut f = AtomicFile::create(&p)?;
        f.write_all(&data)
            .with_context(|| format!("{}: cannot write resume state", p.display()))?;
        f.commit()
    }

    /// Removes the folder once the outputs are complete.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("{}: cannot remove resume state", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_block_gives_back_what_it_learned_and_its_diagnostics_to_the_bit() {
        let dir = std::env::temp_dir().join(format!("apiq-state-test-{}", std::process::id()));
        let out = dir.join("out.gguf");
        std::fs::create_dir_all(&dir).unwrap();
        let state = State::open(&out, "{}").unwrap();
        let learned: Vec<Learned> = (0..LINEARS.len())
            .map(|i| Learned {
                gamma: Some(vec![i as f32, -0.5]),
                beta: Some(vec![1.0 / 3.0, 7.0]),
                lora: (i % 2 == 0).then(|| (vec![0.25; 4], vec![-1e-7; 6])),
            })
            .collect();
        // Values whose decimal forms are long: a lossy text form would change them.
        let diag = Diagnostics {
            mse_rtn: 0.1 + 0.2,
            mse_lwc: Some(1.0 / 3.0 * 1e-5),
        };
        state.save(3, &learned, &diag).unwrap();
        let saved = state.load(3).unwrap().expect("saved");
        assert_eq!(saved.diagnostics, Some(diag));
        for (a, b) in saved.learned.iter().zip(&learned) {
            assert_eq!((&a.gamma, &a.beta, &a.lora), (&b.gamma, &b.beta, &b.lora));
        }
        let none = Diagnostics {
            mse_rtn: 2.5,
            mse_lwc: None,
        };
        state.save(4, &learned, &none).unwrap();
        assert_eq!(state.load(4).unwrap().unwrap().diagnostics, Some(none));
        assert!(state.load(5).unwrap().is_none());
        state.remove().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
